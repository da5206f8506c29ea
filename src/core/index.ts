export { Hub, DEFAULT_LEASE_SECONDS, DEFAULT_PARTITIONS } from "./hub";
export type { ClusterInfo, ClusterOptions } from "./hub";
export type { ClusterLink, ClusterStore, ForwardedMessage, Fence, ClusterHandler } from "./ports/cluster";
export { isClusterStore, isFenced } from "./ports/cluster";
export type {
  HubOptions,
  InboundKind,
  InboundMessage,
  IngestResult,
  HubHealth,
  HubStatistics,
  RegisteredDevice,
  CommunicationStatistics,
  ProtocolStatistics,
  CommandOptions,
  CommandStatistics,
} from "./hub";
export { DeviceTokens } from "./tokens";
export { DeviceRegistry, toDevice, DEFAULT_PAGE_SIZE } from "./registry";
export type { DeviceFilter, DeviceList, DeviceStatistics, DeviceRecord, DeviceSortField } from "./registry";
export { HeartbeatMonitor, DEFAULT_HEARTBEAT_OPTIONS } from "./heartbeat";
export type { HeartbeatOptions, HeartbeatCallbacks, AdaptiveTimeoutOptions, RetentionOptions } from "./heartbeat";
export { StateManager, DEFAULT_TRANSITIONS, DEFAULT_STATE_OPTIONS } from "./state";
export type { StateOptions, TransitionRules, ChangeCause, StateStatistics, StateObserver } from "./state";
export { AnomalyDetector, DEFAULT_ANOMALY_OPTIONS } from "./anomaly";
export type { AnomalyOptions, AnomalyStatistics } from "./anomaly";
export { EventBus } from "./events";
export type {
  DropPolicy,
  EventBusOptions,
  EventHandler,
  EventsMatching,
  EventStatistics,
  HistoryQuery,
  PublishOptions,
  SubscribeOptions,
  SubscriptionHandle,
  SubscriptionStats,
} from "./events";
export { TethralError, ERROR_STATUS, isTethralError, errorMessage } from "./errors";
export type { ErrorCode, ErrorDetail } from "./errors";
export { ManualClock, systemClock } from "./clock";
export type { Clock } from "./clock";
export { LIMITS, DEVICE_ID_PATTERN } from "./validation";
export * from "./types";
