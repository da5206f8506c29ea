import { TethralError } from "../core/errors";
import { type DeviceMessageKind, KIND_OF_STEP } from "./types";

export const DEVICE_LEVELS: readonly string[] = [...KIND_OF_STEP.keys()];
export const COMMANDS_LEVEL = "commands";
/** Where the hub keeps each device's twin, retained (CONTRACT §2). */
export const DESIRED_LEVEL = "desired";
export const DEFAULT_TOPIC_ROOT = "tethral";

/** A topic split into the device it names and its last level; `kind` is null for a level no device sends. */
export interface ParsedTopic {
  deviceId: string;
  level: string;
  kind: DeviceMessageKind | null;
}

/**
 * The topic layout under one root: `{root}/devices/{id}/{level}`. Parsing is a prefix check and
 * one `indexOf`, with no split or regular expression, since it runs for every message.
 */
export class TopicScheme {
  readonly root: string;
  /** `{root}/devices/` */
  readonly prefix: string;

  constructor(root: string = DEFAULT_TOPIC_ROOT) {
    const problem = rootProblem(root);
    if (problem) throw new TethralError("INVALID", `MQTT topic root "${root}": ${problem}`, [{ field: "root", message: problem }]);
    this.root = root;
    this.prefix = `${root}/devices/`;
  }

  commands(deviceId: string): string {
    return `${this.prefix}${deviceId}/${COMMANDS_LEVEL}`;
  }

  desired(deviceId: string): string {
    return `${this.prefix}${deviceId}/${DESIRED_LEVEL}`;
  }

  /** The device's twin topic, for a topic already known to be inside the device's subtree (`isOwn`): the hub's alone to publish on. */
  isDesired(ownTopic: string, deviceId: string): boolean {
    // No string built: this runs for every publish of every device.
    return ownTopic.length === this.prefix.length + deviceId.length + 1 + DESIRED_LEVEL.length && ownTopic.endsWith(DESIRED_LEVEL);
  }

  /** The device's commands topic, for a topic already known to be inside the device's subtree (`isOwn`): the hub's alone to publish on. */
  isCommands(ownTopic: string, deviceId: string): boolean {
    return ownTopic.length === this.prefix.length + deviceId.length + 1 + COMMANDS_LEVEL.length && ownTopic.endsWith(COMMANDS_LEVEL);
  }

  status(deviceId: string): string {
    return `${this.prefix}${deviceId}/status`;
  }

  /** Null for anything but exactly `{root}/devices/{id}/{level}` with a non-empty id and level. */
  parse(topic: string): ParsedTopic | null {
    if (!topic.startsWith(this.prefix)) return null;
    const slash = topic.indexOf("/", this.prefix.length);
    if (slash <= this.prefix.length || slash === topic.length - 1) return null;
    if (topic.indexOf("/", slash + 1) !== -1) return null;
    const level = topic.slice(slash + 1);
    return { deviceId: topic.slice(this.prefix.length, slash), level, kind: KIND_OF_STEP.get(level) ?? null };
  }

  /** True when a topic (or a filter) lies inside the device's own subtree `{root}/devices/{id}/...`. */
  isOwn(topicOrFilter: string, deviceId: string): boolean {
    const own = this.prefix.length + deviceId.length;
    return topicOrFilter.length > own + 1 && topicOrFilter.startsWith(this.prefix) && topicOrFilter.startsWith(deviceId, this.prefix.length) && topicOrFilter[own] === "/";
  }

  /**
   * The filters a device may subscribe to: its commands or desired topic, another of its own documented
   * topics, or its whole subtree (`.../{id}/#` or `.../{id}/+`). A short fixed list, so a device
   * cannot make the broker hold an unbounded number of subscriptions for it.
   */
  deviceMaySubscribe(filter: string, deviceId: string): boolean {
    if (!this.isOwn(filter, deviceId)) return false;
    const level = filter.slice(this.prefix.length + deviceId.length + 1);
    return level === "#" || level === "+" || level === COMMANDS_LEVEL || level === DESIRED_LEVEL || KIND_OF_STEP.has(level);
  }

  /**
   * The filters a hub subscribes to on an external broker. With a group, the device-to-hub
   * streams are shared (`$share/{group}/...`: each message goes to one hub of the group). Status
   * and responses stay unshared: every hub must see every device's presence to answer
   * `isConnected`, and a response must reach the hub that sent the command, whichever it is.
   */
  hubFilters(sharedGroup?: string): string[] {
    const shared = sharedGroup ? `$share/${sharedGroup}/` : "";
    return DEVICE_LEVELS.map((level) =>
      level === "status" || level === "responses" ? `${this.prefix}+/${level}` : `${shared}${this.prefix}+/${level}`,
    );
  }
}

/** MQTT filter matching (`+` one level, `#` the rest, including the parent level) for one topic. */
export function filterMatches(filter: string, topic: string): boolean {
  const f = filter.split("/");
  const t = topic.split("/");
  for (let i = 0; i < f.length; i++) {
    if (f[i] === "#") return true;
    if (i >= t.length) return false;
    if (f[i] !== "+" && f[i] !== t[i]) return false;
  }
  return f.length === t.length;
}

function rootProblem(root: string): string | null {
  if (typeof root !== "string" || root.length === 0) return "must be a non-empty string";
  if (root.length > 200) return "must be at most 200 characters";
  if (/[+#]/.test(root) || root.includes("\0")) return "must not contain the wildcards + or # (or NUL)";
  if (root.startsWith("$")) return "must not start with $ (reserved for the broker)";
  if (root.split("/").some((level) => level.length === 0)) return "must not have empty levels (a leading, trailing or double /)";
  return null;
}

/** A shared-subscription group name: one topic level without wildcards. */
export function checkSharedGroup(group: string): void {
  if (group.length === 0 || group.length > 100 || /[/+#]/.test(group) || group.includes("\0")) {
    throw new TethralError("INVALID", `MQTT sharedGroup "${group}": must be 1-100 characters without / + or #`, [
      { field: "sharedGroup", message: "must be 1-100 characters without / + or #" },
    ]);
  }
}
