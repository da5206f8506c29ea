import type { AdapterContext, CommandFrame, ProtocolAdapter, ProtocolHealth, SendOutcome } from "../../src/protocols/types";
import type { Device } from "../../src/core/types";

interface PendingSend {
  device: Device;
  frame: CommandFrame;
  timeoutMs: number;
  resolve: (outcome: SendOutcome) => void;
  reject: (err: Error) => void;
}

/**
 * An in-process adapter for engine tests: it records every send and leaves the outcome to the
 * test (`answerNext`, `failNext`), or settles it at once when `auto` says how.
 */
export class FakeAdapter implements ProtocolAdapter {
  context!: AdapterContext;
  readonly sends: PendingSend[] = [];
  /** Every frame ever handed over, in order. */
  readonly frames: CommandFrame[] = [];
  /** Per device: true/false when the fake "knows", absent when it cannot tell. */
  readonly links = new Map<string, boolean>();
  auto: SendOutcome | null = { status: "sent" };
  status: ProtocolHealth["status"] = "ok";
  started = false;
  stopped = false;

  constructor(readonly name = "fake") {}

  async start(context: AdapterContext): Promise<void> {
    this.context = context;
    this.started = true;
  }

  async stop(): Promise<void> {
    this.stopped = true;
  }

  send(device: Device, frame: CommandFrame, timeoutMs: number): Promise<SendOutcome> {
    this.frames.push(frame);
    this.context.counters.messagesOut++;
    if (this.auto) return Promise.resolve(this.auto);
    return new Promise((resolve, reject) => this.sends.push({ device, frame, timeoutMs, resolve, reject }));
  }

  isConnected(deviceId: string): boolean | undefined {
    return this.links.get(deviceId);
  }

  health(): ProtocolHealth {
    return { status: this.status };
  }

  statistics() {
    return { connected: [...this.links.values()].filter(Boolean).length };
  }

  /** The device answers a command it was sent, as it would over the wire. */
  respond(deviceId: string, body: unknown) {
    return this.context.receive({ protocol: this.name, deviceId, kind: "response", payload: Buffer.from(JSON.stringify(body)), authenticated: true });
  }
}

/** Lets promise callbacks (an adapter's resolved send) run. */
export function settle(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}
