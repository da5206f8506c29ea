import parsePrometheusTextFormat from "parse-prometheus-text-format";

export type Families = ReturnType<typeof parsePrometheusTextFormat>;

/** Prometheus text format, parsed by a parser nobody here wrote. */
export const parseExposition = (text: string): Families => parsePrometheusTextFormat(text);

/** A sample's value (a histogram's count), or undefined when no series of `name` has these labels. */
export function sampleValue(families: Families, name: string, labels: Record<string, string> = {}): number | undefined {
  const found = families.find((f) => f.name === name)?.metrics.find((m) => Object.entries(labels).every(([k, v]) => m.labels?.[k] === v));
  if (found === undefined) return undefined;
  const { value, count } = found as { value?: string; count?: string };
  return Number(value ?? count);
}
