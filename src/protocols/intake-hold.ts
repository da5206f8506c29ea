import type { Socket } from "node:net";
import type { IntakeSignal } from "./types";

/** What `health()` says while the hub's intake is busy: the hub working as designed, so the status stays `ok`. */
export const BUSY_NOTE = "paused: the store is behind";

/** The `intake` line of an adapter's health, present only while the intake is busy. */
export function busyHealth(intake: IntakeSignal | null | undefined): { intake?: string } {
  return intake?.busy ? { intake: BUSY_NOTE } : {};
}

/**
 * Stops a reader that pulls a socket with `read()` (aedes does, on each 'readable') from getting
 * any more bytes, without touching the reader: while held, `read()` answers null. `pause()` would
 * not do: it only stops a flowing stream, and a stream read on 'readable' is not one. What the
 * socket holds then grows to its high-water mark, Node stops reading the kernel's buffer, and
 * TCP's window closes on the sender: the device is slowed, nothing is dropped. Bytes read before
 * the hold are the reader's to finish.
 */
export class ReadGate {
  private held = false;

  constructor(private readonly socket: Socket) {
    const read = socket.read.bind(socket);
    socket.read = (size?: number) => (this.held ? null : read(size));
  }

  get isHeld(): boolean {
    return this.held;
  }

  hold(): void {
    this.held = true;
  }

  release(): void {
    if (!this.held) return;
    this.held = false;
    // The reader heard 'readable' while held and got nothing; the stream will not say it again
    // for bytes it already has (nor read more, its buffer full): tell the reader to pull again.
    if (!this.socket.destroyed) this.socket.emit("readable");
  }
}

/**
 * The embedded broker's connections that send to the intake: while the intake is busy, those
 * that publish are held (their sockets unread), every one released when it is ready again.
 * A connection that only subscribes, or is idle, goes on being read (its pings answered).
 */
export class PublisherHold {
  /** Each connection's gate, by its reader (the aedes client). */
  private readonly gates = new WeakMap<object, ReadGate>();
  /** Connections that have published to the hub, held at once when the intake turns busy. */
  private readonly publishers = new Set<ReadGate>();
  private readonly held = new Set<ReadGate>();
  private intake: IntakeSignal | null = null;
  private unsubscribe: (() => void) | null = null;
  /** Times a connection was held. */
  private holds = 0;

  start(intake: IntakeSignal): void {
    this.intake = intake;
    this.unsubscribe = intake.onChange((busy) => (busy ? this.holdPublishers() : this.releaseAll()));
  }

  /**
   * Stops listening to the intake. Held connections stay unread until they close: released now,
   * their waiting QoS 1 publishes would be acknowledged by a broker that no longer hands them on.
   */
  stop(): void {
    this.unsubscribe?.();
    this.unsubscribe = null;
    this.publishers.clear();
    this.held.clear();
  }

  /** Gates a new connection's socket; `reader` makes its reader (which must pull through the gate). */
  attach<T extends object>(socket: Socket, reader: () => T): T {
    const gate = new ReadGate(socket);
    const made = reader();
    this.gates.set(made, gate);
    socket.once("close", () => {
      this.publishers.delete(gate);
      this.held.delete(gate);
    });
    return made;
  }

  /** The connection of `reader` delivered a message to the hub: a publisher, held now if the intake is busy. */
  published(reader: object): void {
    const gate = this.gates.get(reader);
    if (!gate) return;
    this.publishers.add(gate);
    if (this.intake?.busy) this.hold(gate);
  }

  figures(): { paused: number; pauses: number } {
    return { paused: this.held.size, pauses: this.holds };
  }

  private holdPublishers(): void {
    for (const gate of this.publishers) this.hold(gate);
  }

  private hold(gate: ReadGate): void {
    if (gate.isHeld) return;
    gate.hold();
    this.held.add(gate);
    this.holds++;
  }

  private releaseAll(): void {
    const held = [...this.held];
    this.held.clear();
    for (const gate of held) gate.release();
  }
}
