import type { MqttClient } from "mqtt";

/** How long a polite end (DISCONNECT) may take before the connection is cut. */
export const END_GRACE_MS = 1000;

/**
 * Ends an mqtt.js client: politely when `graceful` (a DISCONNECT, after what is in flight), else
 * at once; either way cut after END_GRACE_MS, since a polite end waits for every unacknowledged
 * publish, possibly for ever, and a broker may not close its side in time.
 */
export function endClient(client: MqttClient, graceful: boolean): Promise<void> {
  return new Promise<void>((resolve) => {
    const cut = setTimeout(() => {
      client.end(true);
      client.stream?.destroy();
      resolve();
    }, END_GRACE_MS);
    client.end(!graceful, {}, () => {
      clearTimeout(cut);
      resolve();
    });
  });
}
