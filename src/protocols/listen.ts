import type { Server as HttpServer } from "node:http";
import type { AddressInfo, Server } from "node:net";

/** What the system's refusal means for the one who chose the address. */
const REASONS: Readonly<Record<string, string>> = {
  EADDRINUSE: "the port is in use",
  EACCES: "the port needs privileges this user lacks",
  EADDRNOTAVAIL: "the address is not one of this machine's",
  ENOTFOUND: "the host name cannot be resolved",
  EAI_AGAIN: "the host name cannot be resolved",
};

/**
 * A server that could not listen: where, and why in a few words (`reason`). `code` is the
 * system's (EADDRINUSE, EACCES, ...), for a caller to add its own advice; `cause` the original.
 */
export class ListenError extends Error {
  readonly code: string | undefined;
  readonly reason: string;

  constructor(err: NodeJS.ErrnoException, port: number, host: string) {
    const reason = (err.code !== undefined && REASONS[err.code]) || err.message;
    super(`cannot listen on ${host}:${port}: ${reason}`, { cause: err });
    this.name = "ListenError";
    this.code = err.code;
    this.reason = reason;
  }
}

/**
 * Listens on `host`:`port` and resolves with the port bound (the one picked when `port` is 0), or
 * rejects with a ListenError. Its own listeners are gone once it settles: a later server error
 * goes to whoever listens for it then.
 */
export function listen(server: Server, port: number, host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const onError = (err: NodeJS.ErrnoException): void => {
      server.off("listening", onListening);
      reject(new ListenError(err, port, host));
    };
    const onListening = (): void => {
      server.off("error", onError);
      resolve((server.address() as AddressInfo).port);
    };
    server.once("error", onError);
    server.once("listening", onListening);
    server.listen(port, host);
  });
}

/** Closes an HTTP server now: keep-alive connections would hold close() open until they time out. */
export function closeServer(server: HttpServer): Promise<void> {
  return new Promise((resolve) => {
    if (!server.listening) return resolve();
    server.close(() => resolve());
    server.closeAllConnections();
  });
}
