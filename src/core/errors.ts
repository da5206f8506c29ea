/** The stable error codes of CONTRACT §1, with the HTTP status each maps to. */
export const ERROR_STATUS = {
  INVALID: 400,
  UNAUTHORIZED: 401,
  NOT_FOUND: 404,
  CONFLICT: 409,
  DEVICE_ERROR: 502,
  UNAVAILABLE: 503,
  TIMEOUT: 504,
} as const;

export type ErrorCode = keyof typeof ERROR_STATUS;

/** One problem with an input: the dotted path of the field and what is wrong with it. */
export interface ErrorDetail {
  field: string;
  message: string;
}

/**
 * The one error class of the engine. Every failure a caller can act on carries a `code`;
 * the REST flow and the nodes map it to an HTTP status or a Catch-node message.
 */
export class TethralError extends Error {
  readonly code: ErrorCode;
  readonly details: ErrorDetail[];

  constructor(code: ErrorCode, message: string, details: ErrorDetail[] = []) {
    super(message);
    this.name = "TethralError";
    this.code = code;
    this.details = details;
  }

  get status(): number {
    return ERROR_STATUS[this.code];
  }

  /** The JSON body of CONTRACT §1: `{"error": {"code", "message", "details"}}`. */
  toJSON(): { error: { code: ErrorCode; message: string; details: ErrorDetail[] } } {
    return { error: { code: this.code, message: this.message, details: this.details } };
  }
}

export function invalid(field: string, message: string): TethralError {
  return new TethralError("INVALID", `${field}: ${message}`, [{ field, message }]);
}

export function notFound(what: string, id: string): TethralError {
  return new TethralError("NOT_FOUND", `${what} "${id}" not found`);
}

/**
 * True for the engine's errors. A plain class check: the build shares one engine among all node
 * files (tsup.config.ts), and the SQLite thread's errors are made again on this side (sqlite-wire).
 */
export function isTethralError(err: unknown): err is TethralError {
  return err instanceof TethralError;
}

/** The text of anything thrown: an Error's message, anything else as a string. */
export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
