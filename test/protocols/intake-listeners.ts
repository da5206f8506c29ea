import type { Hub } from "../../src/core/hub";

/** The intake's listeners now, as a hub's adapters subscribe and unsubscribe. */
export function listeners(hub: Hub): Set<unknown> {
  const live = new Set<unknown>();
  const onChange = hub.intake.onChange.bind(hub.intake);
  hub.intake.onChange = (listener) => {
    live.add(listener);
    const off = onChange(listener);
    return () => {
      live.delete(listener);
      off();
    };
  };
  return live;
}
