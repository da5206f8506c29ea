import type { Server as HttpServer } from "node:http";
import type { AddressInfo, Server } from "node:net";

/** What the system's refusal means for the one who chose the address, naming it. */
const REASONS: Readonly<Record<string, (port: number, host: string) => string>> = {
  EADDRINUSE: (port, host) => `Port ${port} on ${host} is in use`,
  EACCES: (port, host) => `Port ${port} on ${host} needs privileges this user lacks`,
  EADDRNOTAVAIL: (_port, host) => `${host} is not an address of this machine`,
  ENOTFOUND: (_port, host) => `Host name ${host} cannot be resolved`,
  EAI_AGAIN: (_port, host) => `Host name ${host} cannot be resolved`,
};

/**
 * A server that could not listen: why, naming the address (`reason`, also the message). `code`
 * is the system's (EADDRINUSE, EACCES, ...), for a caller to add its own advice; `cause` the original.
 */
export class ListenError extends Error {
  readonly code: string | undefined;
  readonly reason: string;

  constructor(err: NodeJS.ErrnoException, port: number, host: string) {
    const known = err.code !== undefined ? REASONS[err.code] : undefined;
    const reason = known ? known(port, host) : `cannot listen on ${host}:${port}: ${err.message}`;
    super(reason, { cause: err });
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
