import type { TelemetryAnswer } from "../core/telemetry";

/** One point as Dashboard 2's ui-chart reads it with Series, X and Y set to the keys `series`, `x` and `y`. */
export interface ChartPoint {
  x: number;
  y: number;
  series: string;
}

/**
 * The answer as Dashboard 2's ui-chart draws it, one line per key: `{x, y, series}` with `x` in
 * epoch ms. Booleans plot as 1 and 0; text cannot be plotted and is left out.
 */
export function chartPoints(answer: TelemetryAnswer): ChartPoint[] {
  const out: ChartPoint[] = [];
  for (const [series, points] of Object.entries(answer.series)) {
    for (const p of points) {
      const y = typeof p.value === "number" ? p.value : typeof p.value === "boolean" ? (p.value ? 1 : 0) : null;
      if (y !== null) out.push({ x: Date.parse(p.ts), y, series });
    }
  }
  return out;
}
