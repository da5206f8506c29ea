import { createHash } from "node:crypto";
import type { IncomingMessage, ServerResponse } from "node:http";
import { sendError } from "./http-server";
import type { Handler } from "./node-red";

export interface Credentials {
  user: string;
  pass: string;
}

export function isCredentials(value: unknown): value is Credentials {
  return value !== null && typeof value === "object" && typeof (value as Credentials).user === "string" && typeof (value as Credentials).pass === "string";
}

/** Password checks under way at once, past which a request is answered 503 UNAVAILABLE (bcrypt costs milliseconds of CPU each). */
const MAX_PASSWORD_CHECKS = 4;

/**
 * HTTP Basic authentication as Node-RED's launcher applies it for httpNodeAuth, httpAdminAuth and
 * httpStaticAuth: `pass` is a bcrypt hash (or a legacy MD5 hex digest). The last password that
 * matched is remembered, so a client sending it again does not pay for bcrypt on every request.
 * Other passwords are checked off the event loop's hot path (asynchronously), a few at a time:
 * a client guessing passwords cannot stall the devices and flows the runtime serves.
 */
export function basicAuth(fromRed: NodeJS.Require, { user, pass }: Credentials): Handler {
  const parse = fromRed("basic-auth") as (req: IncomingMessage) => { name: string; pass: string } | undefined;
  let verify: (password: string) => Promise<boolean>;
  if (pass.length === 32) {
    verify = async (p) => createHash("md5").update(p, "utf8").digest("hex") === pass;
  } else {
    try {
      const native = fromRed("@node-rs/bcrypt") as { verify(password: string, hash: string): Promise<boolean> };
      verify = (p) => native.verify(p, pass);
    } catch {
      const js = fromRed("bcryptjs") as { compare(password: string, hash: string): Promise<boolean> };
      verify = (p) => js.compare(p, pass);
    }
  }
  let remembered: string | null = null;
  let checking = 0;
  const refuse = (res: ServerResponse) => {
    res.setHeader("WWW-Authenticate", 'Basic realm="Authorization Required"');
    sendError(res, 401, "UNAUTHORIZED", "this path needs a user name and password (HTTP Basic authentication)");
  };
  return (req, res, next) => {
    if (req.method === "OPTIONS") return next?.();
    const given = parse(req);
    if (given === undefined || given.name !== user) return refuse(res);
    if (given.pass === remembered) return next?.();
    if (checking >= MAX_PASSWORD_CHECKS) {
      res.setHeader("Retry-After", "1");
      return sendError(res, 503, "UNAVAILABLE", "too many password checks under way: try again in a second");
    }
    checking++;
    verify(given.pass).then(
      (ok) => {
        checking--;
        if (!ok) return refuse(res);
        remembered = given.pass;
        next?.();
      },
      () => {
        checking--;
        refuse(res);
      },
    );
  };
}
