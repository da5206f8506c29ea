import type { HubOptions } from "../../src/core/hub";

/**
 * Hub settings for tests that count the rows a hub writes: every telemetry report's history
 * entry and every `state.changed` event are stored (by default the values go to the time series
 * instead, and `state.changed` is not stored).
 */
export const KEEP_EVERY_ROW = {
  state: { historyOfReports: true },
  persistence: { unstoredEventTypes: ["message.received"] },
} satisfies Pick<HubOptions, "state" | "persistence">;
