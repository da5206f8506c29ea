/** The last `size` latencies, for percentiles that follow the present rather than all history. */
export class LatencyWindow {
  private readonly samples: Float64Array;
  private next = 0;
  private count = 0;

  constructor(size: number) {
    this.samples = new Float64Array(size);
  }

  add(ms: number): void {
    this.samples[this.next] = ms;
    this.next = (this.next + 1) % this.samples.length;
    if (this.count < this.samples.length) this.count++;
  }

  /** Nearest-rank percentiles in ms; null before the first sample. */
  percentiles(): { p50: number | null; p95: number | null; p99: number | null; samples: number } {
    if (this.count === 0) return { p50: null, p95: null, p99: null, samples: 0 };
    const sorted = this.samples.slice(0, this.count).sort();
    const at = (p: number): number => sorted[Math.min(this.count - 1, Math.ceil((p / 100) * this.count) - 1)]!;
    return { p50: at(50), p95: at(95), p99: at(99), samples: this.count };
  }
}
