// The runtime (`npm start`) refuses some HTTP device reports before any flow sees them: a body
// that is not JSON, too large or malformed. Those are device messages refused like any other (CONTRACT §4: refused and counted, `message.rejected`), so
// the runtime announces each on Node-RED's runtime event bus and the hub nodes count it.

/** The event on `RED.events` that carries one `HttpRefusal`. */
export const HTTP_REFUSAL_EVENT = "tethral:http-refusal";

/** A device report the runtime refused, as it is announced. */
export interface HttpRefusal {
  deviceId: string;
  kind: string;
  /** `invalid-payload`, `payload-too-large` or `unsupported-media-type`. */
  reason: string;
  message: string;
}

/** The device report paths under the REST API's root: `/devices/{id}/{kind}`. */
const REPORT_PATH = /^\/devices\/([^/?#]+)\/(telemetry|heartbeat|state|status)\/?(?:[?#]|$)/i;

/** The device and kind of a report path under the API root (a URL as Express hands it on), or null. */
export function reportOf(method: string | undefined, url: string | undefined): { deviceId: string; kind: string } | null {
  if ((method ?? "").toUpperCase() !== "POST") return null;
  const match = REPORT_PATH.exec(url ?? "");
  if (!match) return null;
  let deviceId: string;
  try {
    deviceId = decodeURIComponent(match[1]!);
  } catch {
    deviceId = match[1]!;
  }
  return { deviceId: deviceId.slice(0, 256), kind: match[2]!.toLowerCase() };
}
