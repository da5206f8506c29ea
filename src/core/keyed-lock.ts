/**
 * Runs async tasks one at a time per key, each after the one asked for before it; tasks of
 * different keys run side by side. A task that fails does not hold up the next one of its key.
 */
export class KeyedLock {
  private readonly tails = new Map<string, Promise<unknown>>();

  run<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const before = this.tails.get(key) ?? Promise.resolve();
    const run = before.then(fn);
    const tail = run.then(
      () => undefined,
      () => undefined,
    );
    this.tails.set(key, tail);
    void tail.then(() => {
      if (this.tails.get(key) === tail) this.tails.delete(key);
    });
    return run;
  }

  /** Settles (never rejects) once every task asked for so far has settled. */
  idle(): Promise<unknown[]> {
    return Promise.all([...this.tails.values()]);
  }
}
