// The package's programmatic entry: the engine and its stores.
export * from "./core";
export { SqliteStore, type SqliteStoreOptions } from "./store/sqlite";
export { PostgresStore, type PostgresStoreOptions } from "./store/postgres";
export { DEFAULT_PERSISTENCE_OPTIONS, type PersistenceOptions, type PersistenceStatistics } from "./core/write-behind";
export type * from "./core/ports/store";
export { PointBatch } from "./core/point-batch";
export { LATEST_SCHEMA_VERSION } from "./store/migrations";
export { MqttAdapter, type MqttAdapterOptions } from "./protocols/mqtt";
export { CoapAdapter, type CoapAdapterOptions } from "./protocols/coap";
export { WebSocketAdapter, type WebSocketAdapterOptions } from "./protocols/websocket";
export { HttpAdapter, type HttpAdapterOptions } from "./protocols/http";
export { BUILTIN_PROTOCOLS } from "./protocols/builtin";
export type * from "./protocols/types";
