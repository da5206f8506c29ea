import type { AuthenticateError, Client } from "aedes";

/** The embedded broker's dealings with aedes in aedes's own terms: codes, errors and internals it reads. */

/** CONNACK return codes of MQTT 3.1.1 (aedes declares them as an ambient const enum, unusable here). */
export const CONNACK = { IDENTIFIER_REJECTED: 2, SERVER_UNAVAILABLE: 3, BAD_USERNAME_OR_PASSWORD: 4, NOT_AUTHORIZED: 5 } as const;

/**
 * What aedes answers a PUBLISH it refuses before `authorizePublish` sees it (a wildcard, an empty
 * topic, too many levels): it says so only in the error it drops the connection with.
 */
export const AEDES_PUBLISH_REFUSAL = /^(?:[#+] is not allowed in PUBLISH|empty topic not allowed in PUBLISH|topic has too many levels)$/;

/** aedes's session store, of which only this is used (forgetting a persistent session's subscriptions). */
export interface SessionStore {
  cleanSubscriptions(client: { id: string }): Promise<void>;
}

/** Gives a connection its broker-side session name, before aedes looks the session up (see mqtt-sessions). */
export function rename(client: Client, name: string): void {
  (client as { id: string }).id = name;
}

/** An authentication refusal: aedes answers CONNACK with `returnCode`. */
export function refusal(returnCode: number, message: string): AuthenticateError {
  return Object.assign(new Error(message), { returnCode: returnCode as AuthenticateError["returnCode"] });
}
