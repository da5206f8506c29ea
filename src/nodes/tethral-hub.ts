import { Hub, type HubOptions, TethralError, errorMessage, isTethralError } from "../core";
import { MqttClusterLink } from "../cluster/mqtt-link";
import {
  type ClusterConfig,
  type ClusterSettings,
  DB_VARIABLE,
  type HubConfig,
  type HubCredentials,
  type StorageChoice,
  clusterSettingsFor,
  databaseClaim,
  parseClusterConfig,
  parseHubConfig,
  storageFor,
  storeOf,
  toHubOptions,
} from "./hub-config";
import { DevicesFeed, summarize } from "./devices-feed";
import { deviceCharts } from "./device-charts";
import { HubConnection } from "./hub-connection";
import { adaptersFor, protocolPlugins } from "./hub-protocols";
import { HTTP_REFUSAL_EVENT, type HttpRefusal } from "./http-refusals";
import {
  COMMUNICATION_CREDENTIALS,
  type CommunicationConfig,
  type CommunicationCredentials,
  type ProtocolSettings,
  parseCommunicationConfig,
  protocolSettingsFor,
} from "./protocol-config";
import type { Store } from "../core/ports/store";
import type {
  AdminRequest,
  AdminResponse,
  HubLifecycle,
  HubStatus,
  HubStatusListener,
  HubStatusReport,
  Node,
  NodeAPI,
  NodeDef,
  NodeStatus,
  RegisterOptions,
  TethralHubApi,
} from "./types";

type TethralHubDef = NodeDef & Partial<Record<keyof HubConfig | keyof CommunicationConfig | keyof ClusterConfig, unknown>>;

/** Kept by Node-RED apart from the flow file (encrypted with the credential secret). */
const CREDENTIALS: Record<string, { type: "password" }> = {
  postgresPassword: { type: "password" },
  ...Object.fromEntries(COMMUNICATION_CREDENTIALS.map((name) => [name, { type: "password" as const }])),
};

const DISPLAY: Record<HubLifecycle, Omit<NodeStatus, "text">> = {
  idle: { fill: "grey", shape: "ring" },
  starting: { fill: "yellow", shape: "ring" },
  running: { fill: "green", shape: "dot" },
  stopping: { fill: "yellow", shape: "ring" },
  stopped: { fill: "grey", shape: "ring" },
  error: { fill: "red", shape: "ring" },
};

/**
 * The `tethral-hub` config node: holds one Hub, shared by every node that uses this config.
 * Modelled on Node-RED's MQTT broker node: users register, the hub starts on first use, and
 * closing the node (a redeploy or its removal) stops the hub.
 */
export default function (RED: NodeAPI): void {
  registerAdminRoutes(RED);
  RED.nodes.registerType(
    "tethral-hub",
    function TethralHubNode(this: Node, def: TethralHubDef): void {
      RED.nodes.createNode(this, def);
      setUp(RED, this, def);
    },
    { credentials: CREDENTIALS },
  );
};

function setUp(RED: NodeAPI, node: Node, def: TethralHubDef): void {
  // Every registered user node, and whether it shows the hub's state as its status.
  const users = new Map<string, { user: Node; showStatus: boolean }>();

  let config: HubConfig | null = null;
  let communication: CommunicationConfig | null = null;
  let clusterConfig: ClusterConfig | null = null;
  let configError: Error | null = null;
  try {
    config = parseHubConfig(def);
    communication = parseCommunicationConfig(def);
    clusterConfig = parseClusterConfig(def);
  } catch (err) {
    configError = err as Error;
    node.error(`${RED._("tethral-hub.errors.invalid-config")}: ${describe(err)}`);
  }

  // Made with each hub (on every start attempt), so TETHRAL_DB and the store's own checks fail
  // the start the way an unreachable database does: shown as the status and logged.
  let storage = "";
  const connection = new HubConnection(() => {
    if (!config || !communication || !clusterConfig) throw configError ?? new Error("no configuration");
    const uiHost = typeof RED.settings.uiHost === "string" ? RED.settings.uiHost : undefined;
    const settings = protocolSettingsFor(communication, process.env, uiHost);
    const choice = storageFor(config, credentialsOf(node), userDirOf(RED));
    const cluster = clusterSettingsFor(clusterConfig, process.env, uiPortOf(RED));
    if (cluster.enabled) refuseCluster(cluster, choice, settings, communication.mqttBroker);
    const warn = (message: string) => node.warn(message);
    const protocols = adaptersFor(protocolPlugins(RED, warn), settings, communicationCredentialsOf(node), RED.server, warn);
    const store = storeOf(choice);
    storage = describeStorage(RED, choice, store);
    // One hub per database: a second hub on one would silently share it, each keeping its own
    // fleet in memory and writing over the other's. (A second hub on a WebSocket path is refused
    // by its WebSocket adapter alone: the hub starts, that protocol degraded.)
    const claimed = store && databaseClaim(store);
    if (claimed) claim(node, claimed, `already uses this database (${store.description}): give each hub its own file or database`);
    const clusterOptions: Pick<HubOptions, "memberId" | "cluster"> = { memberId: cluster.memberId };
    if (cluster.enabled) {
      clusterOptions.cluster = {
        member: cluster.memberId,
        partitions: cluster.partitions,
        leaseMs: cluster.leaseMs,
        link: clusterLink(settings.mqtt!, communicationCredentialsOf(node)),
      };
    }
    return new Hub({
      ...clusterOptions,
      ...toHubOptions(config, {
        store,
        onHandlerError: (error, event, subscription) =>
          node.warn(`${RED._("tethral-hub.errors.handler-failed")} (${subscription}, ${event.type}): ${errorMessage(error)}`),
        onWarning: warn,
      }),
      protocols,
      deviceTokens: settings.deviceTokens,
      selfRegistration: settings.selfRegistration,
      maxPayloadBytes: settings.maxPayloadBytes,
      commands: { defaultTimeoutSec: settings.commandTimeoutSec },
    });
  });

  const report = (status: HubStatus): HubStatusReport => {
    const label = RED._(`tethral-hub.status.${status.state}`);
    const text = status.state === "error" && status.error ? `${label}: ${status.error}` : label;
    return { ...status, display: { ...DISPLAY[status.state], text } };
  };

  // The editor's Devices sidebar follows this hub while it runs.
  let feed: DevicesFeed | null = null;
  const follow = () => {
    feed?.stop();
    feed = null;
    const hub = RED.comms ? connection.runningHub : null;
    if (!hub) return;
    // At once, on the "running" change: before the calls waiting for the start go on.
    feed = new DevicesFeed(hub, node.id, (update) => RED.comms?.publish(`tethral/devices/${node.id}`, update, false));
    feed.start();
  };

  let lastLogged: string | null = configError ? configError.message : null;
  // A start that failed for a reason that may pass (a database or broker not reachable yet, a
  // port still taken) is tried again on its own, 1 s then doubling to 30 s, as Node-RED's MQTT
  // broker node reconnects: a flow of input nodes only makes no next use that would.
  let retryTimer: NodeJS.Timeout | null = null;
  let retryDelay = RETRY_FIRST_MS;
  let lastFailure: unknown = null;
  const tryAgain = () => {
    if (!connection.closed) acquire().catch(() => undefined);
  };
  // Refused a database another hub holds: tried again when a hub lets one go.
  const retryNow = () => {
    claimWaiters.delete(retryNow);
    tryAgain();
  };
  const retryLater = () => {
    if (retryTimer || connection.closed || configError) return;
    if (isTethralError(lastFailure) && lastFailure.code === "CONFLICT") return void claimWaiters.add(retryNow);
    if (isTethralError(lastFailure) && lastFailure.code === "INVALID") return;
    retryTimer = setTimeout(() => {
      retryTimer = null;
      tryAgain();
    }, retryDelay);
    retryDelay = Math.min(RETRY_MAX_MS, retryDelay * 2);
  };
  connection.onChange((status) => {
    follow();
    const current = report(status);
    for (const { user, showStatus } of users.values()) if (showStatus) user.status(current.display);
    // A start that fails is logged once per distinct reason, not on every retry.
    if (status.state === "error" && status.error && status.error !== lastLogged) {
      lastLogged = status.error;
      node.error(`${RED._("tethral-hub.errors.start-failed")}: ${status.error}`);
    } else if (status.state === "running") {
      lastLogged = null;
      retryDelay = RETRY_FIRST_MS;
      node.log(RED._("tethral-hub.log.started", { storage }));
    }
  });

  const acquire = (): Promise<Hub> =>
    connection.acquire().catch((err: unknown) => {
      lastFailure = err;
      retryLater();
      throw err;
    });
  const api: TethralHubApi = {
    register(user: Node, options: RegisterOptions = {}) {
      const showStatus = options.showStatus !== false;
      users.set(user.id, { user, showStatus });
      if (showStatus) user.status(report(connection.status).display);
      // Start on first use; the failure is shown as the status and logged by the listener above.
      if (!connection.closed) acquire().catch(() => undefined);
    },
    deregister(user: Node) {
      const entry = users.get(user.id);
      users.delete(user.id);
      if (entry?.showStatus) user.status({});
    },
    acquire,
    runningHub: () => connection.runningHub,
    hubStatus: () => report(connection.status),
    onStatus(listener: HubStatusListener) {
      const call = (status: HubStatus) => {
        try {
          listener(report(status));
        } catch (err) {
          node.error(`${RED._("tethral-hub.errors.listener-failed")}: ${errorMessage(err)}`);
        }
      };
      call(connection.status);
      return connection.onChange(call);
    },
    userCount: () => users.size,
  };
  Object.assign(node, api);
  liveHubs.set(node.id, { node, connection });

  // HTTP device reports the flow runtime refused before any flow saw them (not JSON, too large,
  // a foreign Host or Origin) are counted by the running hubs that serve HTTP devices.
  const onHttpRefusal = (payload: unknown) => {
    if (connection.status.state !== "running") return;
    const refusal = payload as HttpRefusal;
    connection.acquire().then(
      (hub) => {
        if (hub.protocols.includes("http")) hub.rejectMessage("http", refusal);
      },
      () => undefined,
    );
  };
  RED.events?.on(HTTP_REFUSAL_EVENT, onHttpRefusal);

  // Node-RED passes `removed` only to a handler that declares exactly two parameters.
  node.on("close", (_removed: boolean, done: () => void) => {
    connection.close().then(
      () => finish(),
      (err: unknown) => {
        node.error(`${RED._("tethral-hub.errors.stop-failed")}: ${errorMessage(err)}`);
        finish();
      },
    );
    function finish(): void {
      if (retryTimer) clearTimeout(retryTimer);
      retryTimer = null;
      claimWaiters.delete(retryNow);
      // Not the redeployed node of the same id, should it be up already.
      if (liveHubs.get(node.id)?.node === node) liveHubs.delete(node.id);
      releaseClaims(node);
      RED.events?.removeListener(HTTP_REFUSAL_EVENT, onHttpRefusal);
      feed?.stop();
      feed = null;
      users.clear();
      done();
    }
  });
}

/** Deployed hub nodes, for the editor's admin endpoints. */
const liveHubs = new Map<string, { node: Node; connection: HubConnection }>();

const RETRY_FIRST_MS = 1000;
const RETRY_MAX_MS = 30_000;

/**
 * What deployed hub nodes have made their own (a database), by key: the node itself, not its id,
 * so a node being closed while its redeployed successor (same id) starts cannot release the
 * successor's.
 */
const claims = new Map<string, Node>();
/** Hub nodes refused a claim: each tries its start again when a claim is released. */
const claimWaiters = new Set<() => void>();

/** Makes `key` this hub node's, or throws CONFLICT when another deployed hub node holds it (`what` it does with it). */
function claim(node: Node, key: string, what: string): void {
  const holder = claims.get(key);
  if (holder !== undefined && holder !== node && liveHubs.get(holder.id)?.node === holder) {
    throw new TethralError("CONFLICT", `another tethral-hub node ("${holder.name || holder.id}") ${what}`);
  }
  claims.set(key, node);
}

function releaseClaims(node: Node): void {
  let released = false;
  for (const [key, holder] of claims) {
    if (holder !== node) continue;
    claims.delete(key);
    released = true;
  }
  if (released) for (const retry of [...claimWaiters]) retry();
}

const PAGE_LIMIT = 1000;

/**
 * Admin endpoints for the editor (device pickers, the Devices sidebar), behind Node-RED's
 * admin auth: `GET /tethral/hubs`, `GET /tethral/hubs/:id/devices?q=&status=&limit=&offset=` and
 * `GET /tethral/hubs/:id/devices/:device/telemetry` (a device's charts, see device-charts.ts).
 * They read a running hub and never start one.
 */
function registerAdminRoutes(RED: NodeAPI): void {
  const admin = RED.httpAdmin;
  if (!admin) return;
  const read = RED.auth?.needsPermission("tethral.read") ?? ((_req: unknown, _res: unknown, next: () => void) => next());
  admin.get("/tethral/hubs", read, (_req, res) => {
    res.json(
      [...liveHubs.entries()].map(([id, { node, connection }]) => ({
        id,
        name: node.name || "",
        state: connection.status.state,
      })),
    );
  });
  /** The running hub of `req.params.id`, or an answer saying why there is none (then null). */
  const runningHub = (req: AdminRequest, res: AdminResponse, idle: () => void): Promise<Hub> | null => {
    const live = liveHubs.get(req.params.id ?? "");
    if (!live) {
      res.status(404).json({ error: { code: "NOT_FOUND", message: "no deployed Tethral hub with this id", details: [] } });
      return null;
    }
    if (live.connection.status.state !== "running") {
      idle();
      return null;
    }
    return live.connection.acquire();
  };
  const refuse = (res: AdminResponse) => (err: unknown) =>
    res.status(isTethralError(err) ? err.status : 503).json(isTethralError(err) ? err.toJSON() : { error: { code: "UNAVAILABLE", message: errorMessage(err), details: [] } });

  admin.get("/tethral/hubs/:id/devices", read, (req, res) => {
    const hub = runningHub(req, res, () => res.json({ state: liveHubs.get(req.params.id ?? "")!.connection.status.state, devices: [], total: 0 }));
    hub?.then((hub) => {
      const q = req.query;
      const limit = Math.min(PAGE_LIMIT, Math.max(1, Number(q.limit) || 200));
      const offset = Math.max(0, Number(q.offset) || 0);
      const list = hub.listDevices({
        ...(typeof q.q === "string" && q.q !== "" && { q: q.q }),
        ...(typeof q.status === "string" && q.status !== "" && { status: q.status as never }),
        limit,
        offset,
      });
      res.json({ state: "running", devices: list.devices.map((d) => summarize(hub, d)), total: list.total });
    }).catch(refuse(res));
  });

  admin.get("/tethral/hubs/:id/devices/:device/telemetry", read, (req, res) => {
    const state = () => liveHubs.get(req.params.id ?? "")!.connection.status.state;
    const hub = runningHub(req, res, () => res.status(503).json({ error: { code: "UNAVAILABLE", message: `the hub is ${state()}`, details: [] } }));
    hub?.then((hub) => deviceCharts(hub, req.params.device ?? "")).then((charts) => res.json(charts), refuse(res));
  });
}

/** Node-RED's port once it listens (PORT=0 picks one), for the default member id. */
function uiPortOf(RED: NodeAPI): number | undefined {
  const port = Number(RED.settings.uiPort);
  return Number.isInteger(port) && port > 0 ? port : undefined;
}

/**
 * Cluster mode shares the fleet through the database and the broker (CONTRACT §8): a store only
 * this process sees, or a broker inside this process, cannot be shared. One line naming what
 * to set.
 */
function refuseCluster(cluster: ClusterSettings, choice: StorageChoice, settings: ProtocolSettings, broker: CommunicationConfig["mqttBroker"]): void {
  const why = cluster.source === "setting" ? "cluster mode (the hub's Cluster setting)" : "cluster mode (TETHRAL_CLUSTER=on)";
  if (choice.kind !== "postgres") {
    const field = choice.source === "setting" ? "storage" : DB_VARIABLE;
    const what = choice.kind === "sqlite" ? "a SQLite file" : "memory only";
    const fix = field === "storage" ? "set the hub's storage to PostgreSQL or CockroachDB" : `set ${DB_VARIABLE} to a postgres:// URL`;
    const message = `${why} needs PostgreSQL or CockroachDB storage shared by every member, not ${what}: ${fix}`;
    throw new TethralError("INVALID", message, [{ field, message }]);
  }
  if (settings.mqtt?.mode !== "external") {
    const what = settings.mqtt ? "the embedded one" : "none (MQTT is off)";
    const field = broker === "auto" ? "TETHRAL_MQTT_URL" : "mqttBroker";
    const fix = field === "mqttBroker" ? "set the hub's MQTT broker to External" : "set TETHRAL_MQTT_URL to the broker's URL";
    const message = `${why} needs an external MQTT broker shared by every member, not ${what}: ${fix}`;
    throw new TethralError("INVALID", message, [{ field, message }]);
  }
}

/** The link between members: a client of its own at the hub's external broker, with the same account and TLS. */
function clusterLink(mqtt: NonNullable<ProtocolSettings["mqtt"]>, credentials: CommunicationCredentials): MqttClusterLink {
  return new MqttClusterLink({
    url: mqtt.url,
    root: mqtt.topicRoot,
    ...(mqtt.username !== "" && { username: mqtt.username }),
    ...(credentials.mqttPassword !== undefined && { password: credentials.mqttPassword }),
    ...(credentials.mqttCa !== undefined && { ca: credentials.mqttCa }),
    ...(credentials.mqttCert !== undefined && { cert: credentials.mqttCert }),
    ...(credentials.mqttKey !== undefined && { key: credentials.mqttKey }),
    rejectUnauthorized: mqtt.rejectUnauthorized,
  });
}

function credentialsOf(node: Node): HubCredentials {
  const password = node.credentials?.postgresPassword;
  return typeof password === "string" ? { postgresPassword: password } : {};
}

function communicationCredentialsOf(node: Node): CommunicationCredentials {
  const out: CommunicationCredentials = {};
  for (const name of COMMUNICATION_CREDENTIALS) {
    const value = node.credentials?.[name];
    if (typeof value === "string" && value !== "") out[name] = value;
  }
  return out;
}

/** Node-RED's user directory; unset under node-red-node-test-helper (see `storageFor`). */
function userDirOf(RED: NodeAPI): string | undefined {
  const dir = RED.settings.userDir;
  return typeof dir === "string" && dir !== "" ? dir : undefined;
}

/** Where the fleet is kept, for the log: a file path or host:port/database, never a password. */
function describeStorage(RED: NodeAPI, choice: StorageChoice, store: Store | null): string {
  const where = store
    ? RED._(`tethral-hub.storage.${store.kind}`, { where: store.description })
    : RED._("tethral-hub.storage.memory");
  return choice.source === DB_VARIABLE ? `${where} ${RED._("tethral-hub.storage.fromVariable", { variable: DB_VARIABLE })}` : where;
}

function describe(err: unknown): string {
  if (isTethralError(err) && err.details.length > 0) {
    return err.details.map((d) => `${d.field} ${d.message}`).join("; ");
  }
  return errorMessage(err);
}
