import { z } from "zod";
import { MAX_EVENT_TTL_SECONDS, USER_TYPE_PATTERN } from "./events";
import { COMMAND_STATUSES, DEVICE_STATUSES, PRIORITIES, RESERVED_EVENT_PREFIXES } from "./types";
import { AGGREGATES } from "./ports/store";
import { deviceIdSchema } from "./validation";

/**
 * The REST API's answers (CONTRACT §1 and §3) as zod schemas, written once: the OpenAPI
 * document (src/core/openapi.ts) converts them to JSON Schema, and the tests check every answer
 * of the API against that document, so the two cannot drift apart. Request bodies are not here:
 * they are the schemas the routes validate with (validation.ts, command-input.ts ...).
 */

const time = z.iso.datetime({ offset: false }).describe("ISO-8601 UTC");
const json = z.record(z.string(), z.unknown());
const counts = z.record(z.string(), z.number().int().nonnegative());
const count = z.number().int().nonnegative();

export const deviceSchema = z
  .object({
    id: deviceIdSchema,
    name: z.string(),
    protocol: z.string(),
    address: z.string().optional(),
    manufacturer: z.string().optional(),
    model: z.string().optional(),
    firmware: z.string().optional(),
    capabilities: z.array(z.string()),
    tags: z.array(z.string()),
    heartbeatTimeout: z.number().positive().optional().describe("seconds of silence before offline"),
    metadata: json,
    status: z.enum(DEVICE_STATUSES),
    lastSeen: time.nullable(),
    createdAt: time,
    updatedAt: time,
  })
  .describe("A device record");

export const registeredDeviceSchema = deviceSchema
  .extend({ token: z.string().optional().describe("the device's token, shown in this answer only (with device tokens on)") })
  .describe("The registered device, with its token the one time it is shown");

const snapshotSchema = z.object({
  status: z.enum(DEVICE_STATUSES).optional(),
  properties: json.optional(),
  desired: json.optional(),
});

export const stateHistoryEntrySchema = z.object({
  deviceId: deviceIdSchema,
  at: time,
  version: count,
  from: snapshotSchema,
  to: snapshotSchema,
  reason: z.string(),
  causeId: z.string().nullable(),
});

export const deviceStateSchema = z
  .object({
    deviceId: deviceIdSchema,
    status: z.enum(DEVICE_STATUSES),
    properties: json.describe("last reported values"),
    desired: json.describe("what flows and users asked for"),
    delta: json.describe("desired keys whose reported value differs"),
    version: count.describe("+1 on every change: the expectedVersion of PUT state"),
    changedAt: time.nullable(),
    updatedAt: time.nullable(),
    reportedAt: time.nullable(),
    history: z.array(stateHistoryEntrySchema).optional().describe("with ?history=N: the last N changes, oldest first"),
  })
  .describe("A device's state");

export const desiredSchema = z
  .object({ desired: json, delta: json, version: count })
  .describe("What a device is asked to be: its desired state, what differs from its report, and the state's version");

export const eventSchema = z
  .object({
    id: z.string(),
    type: z.string(),
    priority: z.enum(PRIORITIES),
    source: z.string(),
    deviceId: z.string().nullable(),
    data: z.unknown(),
    timestamp: time,
    expiresAt: time.nullable(),
    causeId: z.string().nullable().describe("the device message, flow message or command behind the event"),
    parentCauseId: z
      .string()
      .nullable()
      .describe("the cause of that cause: the event a flow reacted to when its message made this one"),
  })
  .describe("An event");

export const commandSchema = z
  .object({
    id: z.string(),
    deviceId: deviceIdSchema,
    command: z.string(),
    params: json,
    status: z.enum(COMMAND_STATUSES),
    attempts: count,
    priority: z.enum(PRIORITIES),
    createdAt: time,
    sentAt: time.nullable(),
    completedAt: time.nullable(),
    expiresAt: time.nullable(),
    result: z.unknown(),
    error: z.string().nullable(),
    expectResponse: z.boolean(),
    timeout: z.number().nonnegative().describe("seconds to wait for the answer, per attempt"),
    retries: count,
  })
  .describe("A command");

export const ERROR_CODES = ["INVALID", "UNAUTHORIZED", "NOT_FOUND", "CONFLICT", "TIMEOUT", "DEVICE_ERROR", "UNAVAILABLE", "INTERNAL"] as const;

export const errorSchema = z
  .object({
    error: z.object({
      code: z.enum(ERROR_CODES),
      message: z.string(),
      details: z.array(z.object({ field: z.string(), message: z.string() })).optional().describe("each bad field"),
    }),
    command: commandSchema.optional().describe("a command that ended badly while the request waited for it"),
  })
  .describe("Every refusal: INVALID 400, UNAUTHORIZED 401, NOT_FOUND 404, CONFLICT 409, DEVICE_ERROR 502, UNAVAILABLE 503, TIMEOUT 504");

const componentSchema = z.looseObject({ status: z.enum(["ok", "degraded", "stopped", "failed"]), error: z.string().optional() });
export const healthSchema = z
  .object({ status: z.enum(["ok", "degraded"]), components: z.record(z.string(), componentSchema) })
  .describe("Each component's health; 503 when the hub cannot run at all");

export const clusterSchema = z
  .object({
    member: z.string().describe("the id of the member that answered"),
    partitions: count.describe("partitions of the fleet, fixed when the cluster's database was first used"),
    members: z.array(
      z.object({
        id: z.string(),
        since: time.describe("when the member joined"),
        lastSeen: time.describe("its last lease renewal"),
        partitions: z.array(count).describe("the partitions it owns"),
      }),
    ),
  })
  .describe("The cluster's live members and the partitions each owns (CONTRACT §8); a single runtime is a cluster of one that owns them all");

export const deviceListSchema = z.object({ devices: z.array(deviceSchema), total: count.describe("devices matching the filter, all pages") });

export const deviceStatisticsSchema = z.object({
  total: count,
  byStatus: counts,
  byProtocol: counts,
  byManufacturer: counts,
  byCapability: counts,
  byTag: counts,
});

export const stateListSchema = z.object({ states: z.array(deviceStateSchema), total: count });

export const stateStatisticsSchema = z.object({
  total: count,
  byStatus: counts,
  transitions: count,
  transitionsByStatus: counts,
  reports: count,
  changes: count,
  withDelta: count,
  anomalies: z.object({ detected: counts, active: counts }),
});

const percentiles = z.object({ p50: z.number().nullable(), p95: z.number().nullable(), p99: z.number().nullable(), samples: count });

export const commandStatisticsSchema = z.object({
  byStatus: counts,
  pending: count,
  inFlight: count,
  lateResponses: count,
  unknownResponses: count,
  latencyMs: percentiles,
  unwritten: count,
});

export const communicationStatisticsSchema = z.object({
  protocols: z.record(
    z.string(),
    z.looseObject({
      messagesIn: count,
      messagesOut: count,
      bytesIn: count,
      bytesOut: count,
      rejected: count,
      errors: count,
      connected: count,
      status: z.enum(["ok", "degraded", "stopped"]),
    }),
  ),
  commands: commandStatisticsSchema,
});

export const eventListSchema = z.object({ events: z.array(eventSchema).describe("newest first") });

export const eventStatisticsSchema = z.object({
  published: count,
  delivered: count,
  failed: count,
  retried: count,
  dropped: count,
  expired: count,
  subscribers: count,
  historySize: count,
  byType: counts,
  byPriority: counts,
});

export const commandListSchema = z.object({ commands: z.array(commandSchema).describe("newest first") });

export const tokenSchema = z.looseObject({ token: z.string().describe("the new token, shown in this answer only") });

/** CONTRACT §7: a telemetry query's answer (`TelemetryAnswer`). */
export const telemetryAnswerSchema = z
  .object({
    deviceId: deviceIdSchema,
    from: time,
    to: time,
    interval: z.string().nullable().describe("the buckets' length, e.g. 15m; null for raw points"),
    agg: z.enum(AGGREGATES).nullable().describe("how each bucket is aggregated; null for raw points"),
    series: z
      .record(z.string(), z.array(z.object({ ts: time.describe("the point's time, or its bucket's start"), value: z.union([z.number(), z.boolean(), z.string(), z.null()]).describe("a number, true or false, or text; null where a bucket's sum, or the average made of it, passes the largest double (about 1.8e308)") })))
      .describe("each key's points, oldest first; an unknown key answers an empty list"),
  })
  .describe("A device's telemetry time series");

export const telemetryKeysSchema = z.object({ keys: z.array(z.string()).describe("sorted") }).describe("The keys a device has reported as series");

/** `POST /api/events`: a user event (CONTRACT §3). */
export const userEventInputSchema = z.strictObject({
  type: z.string().regex(USER_TYPE_PATTERN).describe(`outside the hub's own prefixes (${RESERVED_EVENT_PREFIXES.join(", ")})`),
  data: z.unknown().optional(),
  priority: z.enum(PRIORITIES).optional(),
  deviceId: deviceIdSchema.nullable().optional(),
  ttl: z.number().positive().max(MAX_EVENT_TTL_SECONDS).nullable().optional().describe("seconds until the event expires"),
});

/** The named answers the OpenAPI document lists under components.schemas. */
export const API_SCHEMAS = {
  Device: deviceSchema,
  RegisteredDevice: registeredDeviceSchema,
  DeviceList: deviceListSchema,
  DeviceStatistics: deviceStatisticsSchema,
  DeviceState: deviceStateSchema,
  StateList: stateListSchema,
  StateStatistics: stateStatisticsSchema,
  StateHistoryEntry: stateHistoryEntrySchema,
  Desired: desiredSchema,
  Command: commandSchema,
  CommandList: commandListSchema,
  CommunicationStatistics: communicationStatisticsSchema,
  Event: eventSchema,
  EventList: eventListSchema,
  EventStatistics: eventStatisticsSchema,
  Health: healthSchema,
  Cluster: clusterSchema,
  Token: tokenSchema,
  TelemetryAnswer: telemetryAnswerSchema,
  TelemetryKeys: telemetryKeysSchema,
  Error: errorSchema,
} as const;
export type ApiSchemaName = keyof typeof API_SCHEMAS;
