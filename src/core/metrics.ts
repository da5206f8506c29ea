import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";
import type { ClusterStatistics } from "./cluster/member";
import { DEFAULT_PARTITIONS } from "./hub-options";
import type { CommunicationStatistics, HubHealth } from "./hub";
import type { DeviceStatistics } from "./registry";
import type { EventStatistics } from "./events";
import type { PersistenceStatistics } from "./write-behind";
import { COMMAND_STATUSES, DEVICE_STATUSES } from "./types";

/** What the metrics read from the hub when Prometheus scrapes: the statistics it keeps anyway. */
export interface MetricsSource {
  communication(): CommunicationStatistics;
  devices(): DeviceStatistics;
  events(): EventStatistics;
  /** Null without a store. */
  store(): PersistenceStatistics | null;
  /** The device intake valve (busy while the store is behind). */
  intake(): { busy: boolean; pauses: number; busyMs: number };
  /** Telemetry points recorded and queries answered. */
  series(): { points: number; queries: number };
  /** Refused device messages by protocol and reason. */
  refusals(): Iterable<{ protocol: string; reason: string; count: number }>;
  health(): HubHealth;
  /** Cluster mode (CONTRACT §8); null on a single runtime. */
  cluster?(): ClusterStatistics | null;
}

/** Seconds: a command answered on a LAN takes milliseconds, one over a sleepy radio link seconds. */
const ROUND_TRIP_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];
/** Seconds: a batch on SQLite takes about a millisecond; a remote PostgreSQL under load much more. */
const BATCH_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

/**
 * Node's process figures (CPU, memory, handles, GC, event-loop lag) are the process's, not a
 * hub's, and collecting them arms a GC observer and a lag monitor that cannot be disarmed: they
 * are collected once per process, into a registry of their own, and every hub's registry
 * registers the same metric objects (several hubs in one Node-RED, or a hub made anew on
 * every redeploy, then neither clash nor leak).
 */
let processMetrics: Registry | null = null;
function processRegistry(): Registry {
  if (!processMetrics) {
    processMetrics = new Registry();
    collectDefaultMetrics({ register: processMetrics });
  }
  return processMetrics;
}

/**
 * One hub's Prometheus metrics (CONTRACT §3 `GET /api/metrics`), in a registry of its own. Most
 * values are read from the hub's statistics at scrape time, so the hot paths count nothing
 * more; the two histograms are observed once per answered command and once per store batch.
 */
export class HubMetrics {
  readonly registry = new Registry();
  private readonly roundTrip: Histogram;
  private readonly batch: Histogram;
  /** The process metrics join at the first scrape: a hub nobody scrapes arms no GC observer. */
  private withProcess = false;
  private scrape: { communication?: CommunicationStatistics; events?: EventStatistics; health?: HubHealth } = {};

  constructor(source: MetricsSource) {
    const registers = [this.registry];

    // One read of each statistic serves every metric drawn from it in a scrape (see exposition).
    const comm = () => (this.scrape.communication ??= source.communication());
    const ev = () => (this.scrape.events ??= source.events());
    const health = () => (this.scrape.health ??= source.health());
    // A figure the hub keeps, read at scrape time: a counter (since the hub started) or a gauge (now).
    const counter = (name: string, help: string, read: () => number) =>
      new Counter({
        name,
        help,
        registers,
        collect() {
          this.reset();
          this.inc(read());
        },
      });
    const gauge = (name: string, help: string, read: () => number) =>
      new Gauge({
        name,
        help,
        registers,
        collect() {
          this.set(read());
        },
      });

    const perProtocol = (name: string, help: string, figure: (p: CommunicationStatistics["protocols"][string]) => number) =>
      new Counter({
        name,
        help,
        labelNames: ["protocol"],
        registers,
        collect() {
          this.reset();
          for (const [protocol, p] of Object.entries(comm().protocols)) this.inc({ protocol }, figure(p));
        },
      });
    perProtocol("tethral_messages_received_total", "Messages received from devices, refused ones included.", (p) => p.messagesIn);
    perProtocol("tethral_messages_sent_total", "Messages sent to devices (commands, desired state).", (p) => p.messagesOut);
    perProtocol("tethral_received_bytes_total", "Bytes of device messages received.", (p) => p.bytesIn);
    perProtocol("tethral_sent_bytes_total", "Bytes of messages sent to devices.", (p) => p.bytesOut);
    perProtocol("tethral_protocol_errors_total", "Device messages the hub failed to take in through a fault of its own.", (p) => p.errors);
    new Gauge({
      name: "tethral_protocol_connections",
      help: "Devices with a live connection now (0 for request/response protocols).",
      labelNames: ["protocol"],
      registers,
      collect() {
        this.reset();
        for (const [protocol, p] of Object.entries(comm().protocols)) this.set({ protocol }, p.connected);
      },
    });
    new Counter({
      name: "tethral_messages_refused_total",
      help: "Device messages and connections refused (message.rejected), by protocol and reason.",
      labelNames: ["protocol", "reason"],
      registers,
      collect() {
        this.reset();
        for (const r of source.refusals()) this.inc({ protocol: r.protocol, reason: r.reason }, r.count);
      },
    });

    new Gauge({
      name: "tethral_devices",
      help: "Registered devices by status.",
      labelNames: ["status"],
      registers,
      collect() {
        const byStatus = source.devices().byStatus;
        for (const status of DEVICE_STATUSES) this.set({ status }, byStatus[status] ?? 0);
      },
    });

    new Counter({
      name: "tethral_commands_total",
      help: "Commands that reached each status since the hub started.",
      labelNames: ["status"],
      registers,
      collect() {
        this.reset();
        const byStatus = comm().commands.byStatus;
        for (const status of COMMAND_STATUSES) this.inc({ status }, byStatus[status] ?? 0);
      },
    });
    gauge("tethral_commands_pending", "Commands not ended yet (queued, sent or delivered).", () => comm().commands.pending);
    this.roundTrip = new Histogram({
      name: "tethral_command_round_trip_seconds",
      help: "From sending a command attempt to the device's answer.",
      buckets: ROUND_TRIP_BUCKETS,
      registers,
    });

    counter("tethral_events_published_total", "Events published on the hub's event bus.", () => ev().published);
    counter("tethral_events_delivered_total", "Events handed to subscribers (flows, nodes, adapters).", () => ev().delivered);
    counter("tethral_events_dropped_total", "Events dropped: a subscriber's queue was full.", () => ev().dropped);
    counter("tethral_events_failed_total", "Deliveries whose handler failed after its retries.", () => ev().failed);
    counter("tethral_events_expired_total", "Events that expired (their time to live ran out) before delivery.", () => ev().expired);

    this.batch = new Histogram({
      name: "tethral_store_batch_duration_seconds",
      help: "How long one write-behind batch (presence, state, history, events, points) took to write.",
      buckets: BATCH_BUCKETS,
      registers,
    });
    gauge("tethral_store_backlog_rows", "History, event and telemetry point rows waiting for the database.", () => source.store()?.backlog.rows ?? 0);
    gauge("tethral_store_backlog_limit_rows", "The backlog past which the oldest rows are dropped.", () => source.store()?.backlog.bound ?? 0);
    new Counter({
      name: "tethral_store_dropped_rows_total",
      help: "Rows dropped because the write buffer was full, by table.",
      labelNames: ["table"],
      registers,
      collect() {
        this.reset();
        const dropped = source.store()?.dropped ?? { history: 0, events: 0, points: 0 };
        this.inc({ table: "history" }, dropped.history);
        this.inc({ table: "events" }, dropped.events);
        this.inc({ table: "points" }, dropped.points);
      },
    });
    counter("tethral_telemetry_points_total", "Telemetry values recorded as time-series points.", () => source.series().points);
    counter("tethral_store_points_written_total", "Telemetry points written to the database.", () => source.store()?.pointsWritten ?? 0);
    counter("tethral_telemetry_queries_total", "Time-series queries answered.", () => source.series().queries);
    const cl = () => source.cluster?.() ?? null;
    gauge("tethral_cluster_members", "Live cluster members this member sees (1 on a single runtime).", () => cl()?.members ?? 1);
    gauge("tethral_cluster_partitions_owned", "Partitions whose lease this member holds.", () => cl()?.owned ?? DEFAULT_PARTITIONS);
    gauge("tethral_cluster_partitions_unowned", "Partitions no live member holds (a takeover under way).", () => cl()?.unowned ?? 0);
    counter("tethral_cluster_takeovers_total", "Partitions this member took over (claimed and loaded).", () => cl()?.takeovers ?? 0);
    counter("tethral_cluster_handovers_total", "Partitions this member handed over cleanly (rebalance or stop).", () => cl()?.handovers ?? 0);
    counter("tethral_cluster_leases_lost_total", "Leases this member lost (expired, taken over, or fenced).", () => cl()?.lost ?? 0);
    gauge("tethral_cluster_lease_renewal_lag_seconds", "Seconds since this member last renewed its leases.", () => cl()?.renewalLagSeconds ?? 0);
    counter("tethral_cluster_forwarded_requests_total", "Requests this member sent to other members (writes, commands, deliveries).", () => cl()?.forwardedCalls ?? 0);
    counter("tethral_cluster_forwarded_messages_total", "Device messages this member carried to the owner over the broker.", () => cl()?.forwardedMessages ?? 0);
    counter("tethral_cluster_replayed_messages_total", "Messages a takeover applied that the previous owner had not written.", () => cl()?.replayed ?? 0);
    counter("tethral_cluster_resumed_messages_total", "Messages held while a late lease renewal made this member's leases look lapsed, applied when it came.", () => cl()?.resumed ?? 0);
    gauge("tethral_cluster_held_messages", "Recent messages of other members' devices kept for a takeover.", () => cl()?.held ?? 0);
    counter("tethral_store_fenced_rows_total", "Rows not written because their devices' partitions had moved (fencing).", () => source.store()?.fenced ?? 0);
    gauge("tethral_intake_busy", "1 while the store is behind and the adapters slow the devices (nothing is dropped), else 0.", () => (source.intake().busy ? 1 : 0));
    counter("tethral_intake_pauses_total", "Times the device intake was slowed because the store was behind.", () => source.intake().pauses);
    counter("tethral_intake_busy_seconds_total", "Seconds the device intake has been slowed in all.", () => source.intake().busyMs / 1000);
    counter("tethral_store_rows_written_total", "Rows written by the write-behind batches.", () => source.store()?.rowsWritten ?? 0);
    counter("tethral_store_failures_total", "Batches the database failed to write (retried later).", () => source.store()?.failures ?? 0);
    gauge("tethral_store_degraded", "1 while the database is unreachable and the hub serves from memory, else 0.", () => (source.store()?.degraded ? 1 : 0));

    // The hub's own lag reading (the health component's window), beside prom-client's nodejs_eventloop_lag_*.
    const lag = () => (health().components.process as { eventLoopLagMs?: { p50: number; p99: number; max: number } } | undefined)?.eventLoopLagMs;
    for (const [figure, what] of [["p50", "The median"], ["p99", "The 99th percentile"], ["max", "The most"]] as const) {
      gauge(`tethral_event_loop_lag_${figure}_seconds`, `${what} of how late the hub's timers ran over the last 10 s or more.`, () => (lag()?.[figure] ?? 0) / 1000);
    }
    gauge("tethral_up", "1 when every component of the hub is healthy, 0 when one is degraded (see GET /api/health).", () => (health().status === "ok" ? 1 : 0));
  }

  /** One answered command attempt, in milliseconds. */
  observeRoundTrip(ms: number): void {
    this.roundTrip.observe(ms / 1000);
  }

  /** One written store batch, in milliseconds. */
  observeBatch(ms: number): void {
    this.batch.observe(ms / 1000);
  }

  /** The exposition, in the text format of `contentType`. */
  async exposition(): Promise<{ contentType: string; text: string }> {
    if (!this.withProcess) {
      this.withProcess = true;
      const shared = processRegistry();
      for (const { name } of shared.getMetricsAsArray()) this.registry.registerMetric(shared.getSingleMetric(name)!);
    }
    this.scrape = {};
    try {
      return { contentType: this.registry.contentType, text: await this.registry.metrics() };
    } finally {
      this.scrape = {};
    }
  }
}
