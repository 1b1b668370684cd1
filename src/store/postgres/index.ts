/** The PostgreSQL mail store's public parts. */
export { PostgresStore } from './postgres-store.js';
export type { PostgresStoreOptions } from './postgres-store.js';
export { PostgresStoreConfigSchema, createStorePool } from './config.js';
export type { PostgresStoreConfig, PostgresStoreConfigInput } from './config.js';
export { STORE_HISTORY_TABLE, STORE_MIGRATIONS, STORE_SCHEMA_VERSION, migrateStore, storeSchemaVersion } from './migrations.js';
