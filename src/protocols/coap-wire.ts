import { DEVICE_MESSAGE_KINDS, type DeviceMessageKind } from "./types";

/**
 * CoAP on the wire, read by the hub itself: the coap library's parser accepts some broken
 * messages (a 9-byte token, an option running past the datagram) and answers others with its
 * exception text, to the wrong address. So every datagram is checked here first (RFC 7252 §3),
 * and what the hub answers before the library sees a request is decided here too.
 */

export type MessageType = "CON" | "NON" | "ACK" | "RST";

/** One option as it came: its number and the length of its value. */
export interface WireOption {
  number: number;
  length: number;
}

export type Datagram =
  | { ok: true; type: MessageType; code: string; messageId: number; options: WireOption[] }
  /** `reset`: answer with an RST carrying `messageId` (RFC 7252 §4.2, §4.3); otherwise stay silent. */
  | { ok: false; why: string; reset: boolean; messageId?: number };

const TYPES: readonly MessageType[] = ["CON", "NON", "ACK", "RST"];
/** Request class 0, responses 2, 4 and 5 (RFC 7252 §12.1); the other classes are reserved. */
const CODE_CLASSES = new Set([0, 2, 4, 5]);
const PAYLOAD_MARKER = 0xff;

/** Reads a datagram's header and options without trusting any length in it. */
export function readDatagram(datagram: Buffer): Datagram {
  // Too short to match or too foreign to answer: silently ignored (RFC 7252 §3, §4.2).
  if (datagram.length < 4) return { ok: false, why: `${datagram.length} bytes, shorter than a CoAP header`, reset: false };
  const version = datagram[0]! >> 6;
  if (version !== 1) return { ok: false, why: `version ${version}`, reset: false };
  const type = TYPES[(datagram[0]! >> 4) & 3]!;
  const messageId = datagram.readUInt16BE(2);
  const codeClass = datagram[1]! >> 5;
  const code = `${codeClass}.${String(datagram[1]! & 0x1f).padStart(2, "0")}`;
  // Never answer an ACK or RST with a reset (§4.2): a peer's bad acknowledgement is just dropped.
  const broken = (why: string): Datagram => ({ ok: false, why, reset: type === "CON" || type === "NON", messageId });
  const tokenLength = datagram[0]! & 0x0f;
  if (tokenLength > 8) return broken(`token length ${tokenLength} (at most 8)`);
  if (datagram.length < 4 + tokenLength) return broken("the token is cut short");
  if (!CODE_CLASSES.has(codeClass)) return broken(`code ${code} is of a reserved class`);
  if (code === "0.00" && (datagram.length > 4 || tokenLength > 0)) return broken("an empty message with a token, options or payload");
  if (code === "0.00" && type === "NON") return broken("an empty non-confirmable message");
  const options: WireOption[] = [];
  let at = 4 + tokenLength;
  let number = 0;
  while (at < datagram.length) {
    const byte = datagram[at++]!;
    if (byte === PAYLOAD_MARKER) {
      if (at === datagram.length) return broken("a payload marker with no payload");
      break;
    }
    const delta = extended(datagram, byte >> 4, at);
    if (typeof delta === "string") return broken(`option delta: ${delta}`);
    const length = extended(datagram, byte & 0x0f, delta.at);
    if (typeof length === "string") return broken(`option length: ${length}`);
    number += delta.value;
    if (number > 0xffff) return broken(`option number ${number} (at most 65535)`);
    at = length.at + length.value;
    if (at > datagram.length) return broken(`option ${number} runs past the end of the datagram`);
    options.push({ number, length: length.value });
  }
  return { ok: true, type, code, messageId, options };
}

/** An option delta or length nibble: 13 and 14 continue in one or two more bytes, 15 is reserved. */
function extended(datagram: Buffer, nibble: number, at: number): { value: number; at: number } | string {
  if (nibble < 13) return { value: nibble, at };
  if (nibble === 15) return "15 is reserved";
  const bytes = nibble === 13 ? 1 : 2;
  if (at + bytes > datagram.length) return "its extension is cut short";
  return nibble === 13 ? { value: 13 + datagram[at]!, at: at + 1 } : { value: 269 + datagram.readUInt16BE(at), at: at + 2 };
}

/** An RST matching `messageId`: how a message the hub cannot process is rejected (RFC 7252 §4.2). */
export function resetFor(messageId: number): Buffer {
  return Buffer.of(0x70, 0x00, messageId >> 8, messageId & 0xff);
}

// ── Options (RFC 7252 §5.4) ───────────────────────────────────────────────────────────────

/**
 * The critical (odd-numbered) options the hub understands, with the value lengths each may have
 * (§5.10, RFC 7959 §2.1) and whether it may repeat. Anything else odd is answered 4.02.
 */
const UNDERSTOOD: ReadonlyMap<number, { min: number; max: number; repeatable: boolean }> = new Map([
  [3, { min: 1, max: 255, repeatable: false }], // Uri-Host: one hub answers to every name it has
  [7, { min: 0, max: 2, repeatable: false }], // Uri-Port
  [11, { min: 0, max: 255, repeatable: true }], // Uri-Path
  [15, { min: 0, max: 255, repeatable: true }], // Uri-Query
  [17, { min: 0, max: 2, repeatable: false }], // Accept
  [23, { min: 0, max: 3, repeatable: false }], // Block2
  [27, { min: 0, max: 3, repeatable: false }], // Block1
]);
/** Proxy-Uri and Proxy-Scheme: the hub is no proxy (5.05, §5.7.2). */
const PROXY = new Set([35, 39]);

/** 4.02 (or 5.05) for a request whose critical options the hub cannot honour; null when it can. */
export function optionRefusal(options: readonly WireOption[]): { code: "4.02" | "5.05"; message: string } | null {
  const seen = new Set<number>();
  for (const { number, length } of options) {
    if (number % 2 === 0) continue; // elective: ignored when not understood (§5.4.1)
    if (PROXY.has(number)) return { code: "5.05", message: "this hub is not a proxy (option Proxy-Uri or Proxy-Scheme)" };
    const rule = UNDERSTOOD.get(number);
    if (!rule) return { code: "4.02", message: `critical option ${number} is not supported here` };
    // A bad length or a repeat makes an option unrecognised (§5.4.3, §5.4.5).
    if (length < rule.min || length > rule.max) return { code: "4.02", message: `critical option ${number} has ${length} bytes (${rule.min} to ${rule.max} allowed)` };
    if (seen.has(number) && !rule.repeatable) return { code: "4.02", message: `critical option ${number} may appear only once` };
    seen.add(number);
  }
  return null;
}

// ── Discovery (RFC 6690) ──────────────────────────────────────────────────────────────────

/** application/link-format and application/json (RFC 7252 §12.3). */
export const LINK_FORMAT = 40;
export const JSON_FORMAT = 50;
const TEXT_FORMAT = 0;

/** What each report resource takes: JSON, `online`/`offline` text, or anything (a heartbeat). */
const FORMAT_OF: Record<DeviceMessageKind, number | null> = { telemetry: JSON_FORMAT, heartbeat: null, state: JSON_FORMAT, status: TEXT_FORMAT, register: JSON_FORMAT, response: JSON_FORMAT };

interface Link {
  href: string;
  /** A null value is a flag written without one (RFC 7641 §6 `obs`). */
  attributes: [name: string, value: string | null, quoted: boolean][];
}

/**
 * The hub's resources: one report resource per message kind under every device, and the device's
 * twin, observable (RFC 7641 §6: `obs`). A link is a
 * URI, so the device id is written `{id}` percent-encoded (`%7Bid%7D`): a template to fill in,
 * listed once instead of once per device (which would tell anyone the fleet's ids).
 */
const LINKS: readonly Link[] = DEVICE_MESSAGE_KINDS.map((kind) => {
  const step = kind === "response" ? "responses" : kind;
  const format = FORMAT_OF[kind];
  const attributes: Link["attributes"] = [
    ["rt", `tethral.${step}`, true],
    ["if", "tethral.report", true],
  ];
  if (format !== null) attributes.push(["ct", String(format), false]);
  return { href: `/devices/%7Bid%7D/${step}`, attributes };
}).concat({
  href: "/devices/%7Bid%7D/desired",
  attributes: [
    ["rt", "tethral.desired", true],
    ["if", "core.s", true],
    ["ct", String(JSON_FORMAT), false],
    ["obs", null, false],
  ],
});

/**
 * `GET /.well-known/core`, filtered by one `name=value` query (RFC 6690 §4.1): `href` or an
 * attribute, where a value ending in `*` matches as a prefix. Unknown filters match nothing.
 */
export function coreLinks(queries: readonly string[]): string {
  let links = LINKS;
  const query = queries[0];
  if (query !== undefined && query !== "") {
    const eq = query.indexOf("=");
    const name = eq < 0 ? query : query.slice(0, eq);
    const wanted = eq < 0 ? "" : query.slice(eq + 1);
    const matches = (value: string) => (wanted.endsWith("*") ? value.startsWith(wanted.slice(0, -1)) : value === wanted);
    links = links.filter((link) => {
      if (name === "href") return matches(decodeURIComponent(link.href)) || matches(link.href);
      // An attribute may hold several space-separated values (rt, if); any one may match.
      return link.attributes.some(([n, value]) => n === name && (value === null ? wanted === "" : value.split(" ").some(matches)));
    });
  }
  return links.map((link) => `<${link.href}>${link.attributes.map(([n, v, quoted]) => (v === null ? `;${n}` : `;${n}=${quoted ? `"${v}"` : v}`)).join("")}`).join(",");
}
