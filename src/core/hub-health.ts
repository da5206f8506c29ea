import type { CommandStatistics } from "./commands";
import type { HubHealth } from "./hub-options";
import type { ProtocolHealth } from "./ports/protocol";
import type { Persistence } from "./write-behind";

type Figures = object;

/** What the hub's health is made of, read from its components. */
export interface HealthParts {
  registry: Figures;
  heartbeat: Figures;
  state: Figures;
  events: Figures;
  commands: CommandStatistics;
  protocols: Map<string, ProtocolHealth>;
  store: Persistence | null;
  process: Figures;
  /** CONTRACT §8: this member's view of the cluster; `degraded` when it is short of something. */
  cluster: Figures & { degraded: boolean };
}

/**
 * The hub's health (GET /api/health): each component with its status and figures. Degraded while
 * the hub is not running, a protocol is not ok, or the store is unreachable or falling behind.
 */
export function healthOf(running: boolean, parts: HealthParts): HubHealth {
  const up = running ? "ok" : "stopped";
  const components: HubHealth["components"] = {
    registry: { status: up, ...parts.registry },
    heartbeat: { status: up, ...parts.heartbeat },
    state: { status: up, ...parts.state },
    events: { status: up, ...parts.events },
    commands: { status: up, pending: parts.commands.pending, inFlight: parts.commands.inFlight },
  };
  let protocolsDegraded = false;
  for (const [name, h] of parts.protocols) {
    components[`protocol:${name}`] = h;
    if (running && h.status !== "ok") protocolsDegraded = true;
  }
  const p = parts.store;
  let storeDegraded = false;
  if (p) {
    const stats = p.statistics();
    const pressure = p.pressure;
    storeDegraded = p.isDegraded || pressure !== null;
    components.store = {
      status: !running ? "stopped" : storeDegraded ? "degraded" : "ok",
      kind: p.store.kind,
      pending: stats.pending,
      backlog: stats.backlog,
      dropped: stats.dropped,
      pointsWritten: stats.pointsWritten,
      ...(p.intakeState !== null && { intake: p.intakeState }),
      ...(pressure !== null && { error: pressure }),
    };
  }
  components.process = { status: up, ...parts.process };
  const { degraded: clusterDegraded, ...cluster } = parts.cluster;
  components.cluster = { status: !running ? "stopped" : clusterDegraded ? "degraded" : "ok", ...cluster };
  return { status: !running || storeDegraded || protocolsDegraded || (running && clusterDegraded) ? "degraded" : "ok", components };
}
