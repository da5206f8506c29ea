/** An item with a due time and its slot in the heap (-1 when not in it). */
export interface Scheduled {
  due: number;
  heapIndex: number;
}

/**
 * A binary min-heap on `due` that keeps each item's position, so an item is in it at most once
 * and can be moved or removed in O(log n). The heartbeat monitor keeps one entry per device.
 */
export class DeadlineHeap<T extends Scheduled> {
  private readonly items: T[] = [];

  get size(): number {
    return this.items.length;
  }

  peek(): T | undefined {
    return this.items[0];
  }

  /** Inserts `item` at `due`, or moves it there if it is already in the heap. */
  schedule(item: T, due: number): void {
    if (item.heapIndex >= 0) {
      const before = item.due;
      item.due = due;
      if (due < before) this.up(item.heapIndex);
      else this.down(item.heapIndex);
      return;
    }
    item.due = due;
    item.heapIndex = this.items.length;
    this.items.push(item);
    this.up(item.heapIndex);
  }

  remove(item: T): void {
    const i = item.heapIndex;
    if (i < 0) return;
    const last = this.items.pop()!;
    item.heapIndex = -1;
    if (i === this.items.length) return;
    this.items[i] = last;
    last.heapIndex = i;
    this.up(i);
    this.down(last.heapIndex);
  }

  /** Removes and returns the earliest item if it is due at `now`. */
  popDue(now: number): T | undefined {
    const top = this.items[0];
    if (top === undefined || top.due > now) return undefined;
    this.remove(top);
    return top;
  }

  clear(): void {
    for (const item of this.items) item.heapIndex = -1;
    this.items.length = 0;
  }

  private up(i: number): void {
    const items = this.items;
    const item = items[i]!;
    while (i > 0) {
      const p = (i - 1) >> 1;
      const parent = items[p]!;
      if (parent.due <= item.due) break;
      items[i] = parent;
      parent.heapIndex = i;
      i = p;
    }
    items[i] = item;
    item.heapIndex = i;
  }

  private down(i: number): void {
    const items = this.items;
    const n = items.length;
    const item = items[i]!;
    for (;;) {
      const l = 2 * i + 1;
      if (l >= n) break;
      const r = l + 1;
      const c = r < n && items[r]!.due < items[l]!.due ? r : l;
      const child = items[c]!;
      if (child.due >= item.due) break;
      items[i] = child;
      child.heapIndex = i;
      i = c;
    }
    items[i] = item;
    item.heapIndex = i;
  }
}
