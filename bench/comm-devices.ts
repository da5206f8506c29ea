/**
 * Simulated MQTT devices for `bench/comm.bench.ts`, in a worker thread so the devices and the
 * hub each have a core. Told what to do by messages from the main thread:
 * - `connect`: one mqtt.js client per device (username = id, password = token);
 * - `publish`: every device publishes QoS 0 telemetry, round after round;
 * - `answer`: devices subscribe to their commands topic and answer each command (QoS 1).
 */
import { parentPort } from "node:worker_threads";
import mqtt, { type MqttClient } from "mqtt";

interface Device {
  id: string;
  token: string | null;
}

type Request =
  | { op: "connect"; url: string; devices: Device[]; root: string }
  | { op: "publish"; rounds: number; typical?: boolean }
  | { op: "answer" }
  | { op: "close" };

const clients: Array<{ id: string; client: MqttClient }> = [];
let root = "tethral";

async function connect(url: string, devices: Device[]): Promise<void> {
  // A few at a time: a thousand CONNECTs at once would measure the broker's accept queue.
  for (let i = 0; i < devices.length; i += 50) {
    await Promise.all(
      devices.slice(i, i + 50).map(
        (d) =>
          new Promise<void>((resolve, reject) => {
            const client = mqtt.connect(url, {
              clientId: d.id,
              username: d.token ? d.id : undefined,
              password: d.token ?? undefined,
              reconnectPeriod: 0,
              protocolVersion: 4,
            });
            client.once("connect", () => {
              // A device's answers are small writes too: as real firmware should, send them at once.
              (client.stream as { setNoDelay?: (on: boolean) => void }).setNoDelay?.(true);
              clients.push({ id: d.id, client });
              resolve();
            });
            client.once("error", reject);
          }),
      ),
    );
  }
}

/** `typical`: a report of about 100 bytes, as a sensor sends it (bench:peer); else a small one. */
async function publish(rounds: number, typical = false): Promise<number> {
  let sent = 0;
  for (let r = 0; r < rounds; r++) {
    for (const { id, client } of clients) {
      const payload = typical
        ? `{"temperature":${20 + (r % 10)}.5,"humidity":${40 + (r % 7)},"battery":${90 - (r % 5)},"rssi":-6${r % 10},"door":"closed","seq":${r}}`
        : `{"temperature":${20 + (r % 10)},"seq":${r}}`;
      client.publish(`${root}/devices/${id}/telemetry`, payload, { qos: 0 });
      sent++;
    }
    // Let the sockets drain: without this, writes pile up in memory instead of on the wire.
    await new Promise((resolve) => setImmediate(resolve));
  }
  return sent;
}

async function answer(): Promise<void> {
  await Promise.all(
    clients.map(
      ({ id, client }) =>
        new Promise<void>((resolve, reject) => {
          client.on("message", (_topic, payload) => {
            const command = JSON.parse(payload.toString()) as { id: string };
            client.publish(`${root}/devices/${id}/responses`, JSON.stringify({ id: command.id, ok: true, result: { done: true } }), { qos: 1 });
          });
          client.subscribe(`${root}/devices/${id}/commands`, { qos: 1 }, (err) => (err ? reject(err) : resolve()));
        }),
    ),
  );
}

parentPort!.on("message", (request: Request) => {
  const reply = (value: unknown) => parentPort!.postMessage({ ok: true, value });
  const fail = (err: unknown) => parentPort!.postMessage({ ok: false, error: err instanceof Error ? err.message : String(err) });
  switch (request.op) {
    case "connect":
      root = request.root;
      connect(request.url, request.devices).then(() => reply(clients.length), fail);
      break;
    case "publish":
      publish(request.rounds, request.typical).then(reply, fail);
      break;
    case "answer":
      answer().then(() => reply(true), fail);
      break;
    case "close":
      Promise.all(clients.map(({ client }) => client.endAsync(true))).then(() => {
        clients.length = 0;
        reply(true);
      }, fail);
      break;
  }
});
