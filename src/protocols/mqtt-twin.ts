import { encodeTwin } from "../core/twin";
import type { DeviceTwin } from "../core/types";
import type { AdapterContext, ProtocolCounters } from "./types";

/** Why a twin goes to `{root}/devices/{id}/desired`: it changed, or the broker is given it again (start-up, reconnection). */
export type TwinPublish = "change" | "republish";

/**
 * The retained message for a device's twin, on either kind of broker: its JSON, or empty to clear
 * it (the device was removed). Every one is a twin published; only a change is a message sent to
 * a device (messagesOut, bytesOut): clears go out for every removed device, mqtt or not (one whose
 * protocol changed away may still have a retained twin), and a republish repeats what was sent.
 */
export function twinMessage(twin: DeviceTwin | null, why: TwinPublish, figures: { twinsPublished: number }, counters: ProtocolCounters | undefined): Buffer {
  const payload = twin ? Buffer.from(encodeTwin(twin), "utf8") : Buffer.alloc(0);
  figures.twinsPublished++;
  if (twin && why === "change" && counters) {
    counters.messagesOut++;
    counters.bytesOut += payload.length;
  }
  return payload;
}

/** A twin the broker did not take: an error of the protocol, and a warning naming the device. */
export function twinNotPublished(context: AdapterContext, deviceId: string, err: Error): void {
  context.counters.errors++;
  context.warn(`the twin of "${deviceId}" was not published: ${err.message}`);
}
