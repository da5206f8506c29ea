import type { PointRow, PointValue } from "./ports/store";

/** In `others`: the point's value is the number in `nums` (a caller's null or NaN stays what it was, and is refused). */
const NUMBER = Symbol("number");

/**
 * Telemetry points in columns: per point a device id, a key, a time, and a number (NaN for a
 * value that is not one, which is then in `others`; `NUMBER` there for a number). What the
 * write-behind queue hands a store. Points are checked by the store that writes them
 * (`checkPoint`), so a batch may hold anything a caller sent: `PointBatch.of` takes rows as they
 * are.
 */
export class PointBatch {
  constructor(
    readonly deviceIds: string[],
    readonly keys: string[],
    readonly times: Float64Array,
    readonly nums: Float64Array,
    readonly others: unknown[],
    /** Points in the batch: the first `length` slots of each column (the columns may be longer). */
    readonly length: number = deviceIds.length,
  ) {}

  static empty(): PointBatch {
    return new PointBatch([], [], new Float64Array(0), new Float64Array(0), []);
  }

  /** The points as a batch: a batch as it is, rows copied into columns. */
  static of(points: PointBatch | readonly PointRow[] | undefined): PointBatch {
    if (points instanceof PointBatch) return points;
    if (!points) return PointBatch.empty();
    const n = points.length;
    const out = new PointBatch(new Array<string>(n), new Array<string>(n), new Float64Array(n), new Float64Array(n), new Array<unknown>(n));
    for (let i = 0; i < n; i++) {
      const p = points[i]!;
      out.set(i, p.deviceId, p.key, p.ts, p.value);
    }
    return out;
  }

  value(i: number): PointValue {
    const other = this.others[i];
    return (other === NUMBER ? this.nums[i] : other) as PointValue;
  }

  row(i: number): PointRow {
    return { deviceId: this.deviceIds[i]!, key: this.keys[i]!, ts: this.times[i]!, value: this.value(i) };
  }

  rows(): PointRow[] {
    return Array.from({ length: this.length }, (_, i) => this.row(i));
  }

  slice(start: number, end = this.length): PointBatch {
    end = Math.min(end, this.length);
    return new PointBatch(this.deviceIds.slice(start, end), this.keys.slice(start, end), this.times.slice(start, end), this.nums.slice(start, end), this.others.slice(start, end));
  }

  /** The points at `order`'s indexes, in that order. */
  pick(order: ArrayLike<number>): PointBatch {
    const n = order.length;
    const out = new PointBatch(new Array<string>(n), new Array<string>(n), new Float64Array(n), new Float64Array(n), new Array<unknown>(n));
    for (let i = 0; i < n; i++) {
      const j = order[i]!;
      out.deviceIds[i] = this.deviceIds[j]!;
      out.keys[i] = this.keys[j]!;
      out.times[i] = this.times[j]!;
      out.nums[i] = this.nums[j]!;
      out.others[i] = this.others[j];
    }
    return out;
  }

  /** The points whose device `keep` accepts, in their order. */
  filter(keep: (deviceId: string) => boolean): PointBatch {
    const order: number[] = [];
    for (let i = 0; i < this.length; i++) if (keep(this.deviceIds[i]!)) order.push(i);
    return order.length === this.length ? this : this.pick(order);
  }

  private set(i: number, deviceId: string, key: string, ts: unknown, value: unknown): void {
    this.deviceIds[i] = deviceId;
    this.keys[i] = key;
    // A time that is not a number stays one the store refuses (a typed array would convert "5").
    this.times[i] = typeof ts === "number" ? ts : Number.NaN;
    putValue(this.nums, this.others, i, value);
  }
}

/** A point's value at `i`: a number in `nums` (`NUMBER` in `others`), else NaN there and the value in `others`. */
function putValue(nums: Float64Array, others: unknown[], i: number, value: unknown): void {
  if (typeof value === "number") {
    nums[i] = value;
    others[i] = NUMBER;
  } else {
    nums[i] = Number.NaN;
    others[i] = value;
  }
}

/**
 * Slots a buffer starts with, and never shrinks below: 16,384 points (about 650 KB of columns),
 * so that a busy hub's backlog reaches its size in few doublings, each a copy into fresh memory.
 */
const MIN_SLOTS = 16_384;

/**
 * The points waiting to be written, oldest first, in columns that are reused from batch to
 * batch. A point taken in costs five array slots written, and no allocation: an object per point
 * would live until its batch is written, long enough for the garbage collector to copy it, and
 * fresh memory is what costs most on the machines measured here (a page fault per 4 KiB). The
 * slots in use run from `head` to `tail`; both go back to 0 when it empties, which a flush that
 * takes everything does.
 */
export class PointBuffer {
  private deviceIds: string[];
  private keys: string[];
  private times: Float64Array;
  private nums: Float64Array;
  private others: unknown[];
  private head = 0;
  private tail = 0;
  /** The most points waiting at once since the buffer last considered shrinking. */
  private peak = 0;
  private takes = 0;
  /** The batch `lend` gave whose columns have not come back yet, and the columns that have. */
  private lent: PointBatch | null = null;
  private spare: PointBatch | null = null;

  /** The slots it starts with and never shrinks below. */
  private readonly minSlots: number;

  constructor(minSlots = MIN_SLOTS) {
    this.minSlots = Math.max(1, Math.floor(minSlots));
    this.deviceIds = new Array<string>(this.minSlots).fill("");
    this.keys = new Array<string>(this.minSlots).fill("");
    this.times = new Float64Array(this.minSlots);
    this.nums = new Float64Array(this.minSlots);
    this.others = new Array<unknown>(this.minSlots).fill(null);
  }

  get length(): number {
    return this.tail - this.head;
  }

  push(deviceId: string, key: string, ts: number, value: PointValue): void {
    if (this.tail === this.times.length) this.makeRoom();
    const i = this.tail++;
    this.deviceIds[i] = deviceId;
    this.keys[i] = key;
    this.times[i] = ts;
    putValue(this.nums, this.others, i, value);
    if (this.tail - this.head > this.peak) this.peak = this.tail - this.head;
  }

  /** Every point of `batch` added at the end. */
  append(batch: PointBatch): void {
    for (let i = 0; i < batch.length; i++) this.push(batch.deviceIds[i]!, batch.keys[i]!, batch.times[i]!, batch.value(i));
  }

  /**
   * `take`, without a copy when the batch is everything waiting from the first slot (a flush
   * that keeps up): the columns themselves go, and the buffer goes on in the ones `recycle` gave
   * back, or new ones. Give the batch back with `recycle` once nothing reads it any more.
   */
  lend(max: number): PointBatch {
    if (this.head !== 0 || this.tail === 0 || this.tail > max || this.lent !== null) return this.take(max);
    const out = new PointBatch(this.deviceIds, this.keys, this.times, this.nums, this.others, this.tail);
    this.lent = out;
    const spare = this.spare;
    this.spare = null;
    const slots = this.times.length;
    if (spare !== null && spare.times.length === slots) {
      ({ deviceIds: this.deviceIds, keys: this.keys, times: this.times, nums: this.nums, others: this.others } = spare);
    } else {
      this.deviceIds = new Array<string>(slots).fill("");
      this.keys = new Array<string>(slots).fill("");
      this.times = new Float64Array(slots);
      this.nums = new Float64Array(slots);
      this.others = new Array<unknown>(slots).fill(null);
    }
    this.head = this.tail = 0;
    if (++this.takes >= 64) this.maybeShrink();
    return out;
  }

  /** A batch `lend` gave, back: its columns are used again (a batch `take` gave is let go). */
  recycle(batch: PointBatch | PointRow[] | undefined): void {
    if (batch === undefined || batch !== this.lent) return;
    this.lent = null;
    // Texts are let go of; ids and keys are overwritten soon enough.
    batch.others.fill(null, 0, batch.length);
    this.spare = batch;
  }

  /** The oldest `max` points (or all), taken off the buffer as a batch of their own (a copy). */
  take(max: number): PointBatch {
    const end = Math.min(this.tail, this.head + max);
    const out = new PointBatch(
      this.deviceIds.slice(this.head, end),
      this.keys.slice(this.head, end),
      this.times.slice(this.head, end),
      this.nums.slice(this.head, end),
      this.others.slice(this.head, end),
    );
    this.drop(end - this.head);
    return out;
  }

  /** Drops the oldest `n` points. */
  drop(n: number): void {
    const end = Math.min(this.tail, this.head + n);
    // Texts are let go of; ids and keys are overwritten soon enough.
    this.others.fill(null, this.head, end);
    this.head = end;
    if (this.head === this.tail) {
      this.head = this.tail = 0;
      if (++this.takes >= 64) this.maybeShrink();
    }
  }

  /** Puts `batch` back in front of what waits (a batch that could not be written). */
  prepend(batch: PointBatch): void {
    if (batch.length === 0) return;
    const rest = this.take(this.length);
    this.append(batch);
    this.append(rest);
  }

  /** Takes every point of `deviceId` off the buffer (the others keep their order). */
  extract(deviceId: string): PointBatch {
    return this.extractWhere((id) => id === deviceId);
  }

  /** Takes every point of the devices `match` picks off the buffer (the others keep their order). */
  extractWhere(match: (deviceId: string) => boolean): PointBatch {
    // One pass to look; the buffer is rebuilt only when a device it picks has points in it.
    let found = false;
    for (let i = this.head; i < this.tail && !found; i++) found = match(this.deviceIds[i]!);
    if (!found) return PointBatch.empty();
    const all = this.take(this.length);
    const picked: number[] = [];
    for (let i = 0; i < all.length; i++) {
      if (match(all.deviceIds[i]!)) picked.push(i);
      else this.push(all.deviceIds[i]!, all.keys[i]!, all.times[i]!, all.value(i));
    }
    return all.pick(picked);
  }

  private makeRoom(): void {
    const used = this.tail - this.head;
    if (this.head > 0 && used <= this.times.length / 2) {
      // Half or more of the slots are free at the front: move what waits there.
      this.deviceIds.copyWithin(0, this.head, this.tail);
      this.keys.copyWithin(0, this.head, this.tail);
      this.times.copyWithin(0, this.head, this.tail);
      this.nums.copyWithin(0, this.head, this.tail);
      this.others.copyWithin(0, this.head, this.tail);
      this.others.fill(null, used, this.tail);
      this.head = 0;
      this.tail = used;
      return;
    }
    this.resize(Math.max(16, this.times.length * 2));
  }

  /** Once every 64 emptyings: halves the slots while the most that waited used under a quarter. */
  private maybeShrink(): void {
    this.takes = 0;
    if (this.peak < this.times.length / 4 && this.times.length > this.minSlots) this.resize(Math.max(this.minSlots, this.times.length / 2));
    this.peak = 0;
  }

  private resize(slots: number): void {
    const used = this.tail - this.head;
    const copy = <T>(from: T[], fill: T): T[] => {
      const to = new Array<T>(slots);
      for (let i = 0; i < used; i++) to[i] = from[this.head + i]!;
      to.fill(fill, used);
      return to;
    };
    this.deviceIds = copy(this.deviceIds, "");
    this.keys = copy(this.keys, "");
    this.others = copy(this.others, null);
    const times = new Float64Array(slots);
    times.set(this.times.subarray(this.head, this.tail));
    this.times = times;
    const nums = new Float64Array(slots);
    nums.set(this.nums.subarray(this.head, this.tail));
    this.nums = nums;
    this.head = 0;
    this.tail = used;
  }
}
