import type pg from "pg";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { from as copyFrom } from "pg-copy-streams";

/** PostgreSQL's unique_violation: a COPY of rows of which one is already there fails with it. */
export const UNIQUE_VIOLATION = "23505";

/** Text sent per write of a COPY stream. */
const COPY_PIECE = 64 * 1024;

const NEEDS_ESCAPE = /[\\\n\r\t]/;

/**
 * A value in COPY's text format: `\N` for NULL; a backslash, newline, carriage return or tab
 * escaped, as the format's delimiters and escape character.
 */
export function copyValue(value: unknown): string {
  if (value === null || value === undefined) return "\\N";
  const s = String(value);
  if (!NEEDS_ESCAPE.test(s)) return s;
  return s.replace(/[\\\n\r\t]/g, (ch) => (ch === "\\" ? "\\\\" : ch === "\n" ? "\\n" : ch === "\r" ? "\\r" : "\\t"));
}

/**
 * Runs `COPY … FROM STDIN` (`sql`) on `c` with `lines` (each ending in a newline), sent in pieces
 * of about 64 KiB. The pieces are made as the stream asks for them, so the server parses one
 * while the next is made (on two cores, the two overlap instead of taking turns).
 */
export async function copyLines(c: pg.ClientBase, sql: string, lines: Iterable<string>): Promise<void> {
  await pipeline(Readable.from(pieces(lines), { objectMode: false }), c.query(copyFrom(sql)));
}

function* pieces(lines: Iterable<string>): Generator<string> {
  let text = "";
  for (const line of lines) {
    text += line;
    if (text.length >= COPY_PIECE) {
      yield text;
      text = "";
    }
  }
  if (text.length > 0) yield text;
}

/**
 * Rows given as column arrays (a statement's parameters, in chunks: `chunks[i][column][row]`) as
 * lines of COPY text, every value through `copyValue`.
 */
export function* columnLines(chunks: readonly (readonly unknown[][])[]): Generator<string> {
  for (const cols of chunks) {
    const rows = cols[0]?.length ?? 0;
    for (let r = 0; r < rows; r++) {
      let line = "";
      for (let k = 0; k < cols.length; k++) line += (k === 0 ? "" : "\t") + copyValue(cols[k]![r]);
      yield `${line}\n`;
    }
  }
}
