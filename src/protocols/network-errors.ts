/**
 * Network errors a device, or the way to it, causes: refused, reset, unreachable, an unknown
 * name, TLS, a malformed answer. A command failing with one is the device's failure, counted in
 * the adapter's figures and the command's status, not in the protocol's errors (the hub's own).
 */
const DEVICE_SIDE_CODES = new Set(["ECONNREFUSED", "ECONNRESET", "ECONNABORTED", "EPIPE", "ETIMEDOUT", "EHOSTUNREACH", "EHOSTDOWN", "ENETUNREACH", "ENETDOWN", "ENOTFOUND", "EAI_AGAIN"]);

export function isDeviceSide(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  if (typeof code !== "string") return false;
  return DEVICE_SIDE_CODES.has(code) || /^(HPE_|ERR_SSL_|ERR_TLS_)|CERT|SELF_SIGNED/.test(code);
}
