export { PostgresAuthenticator } from './authenticator.js';
export type { PostgresAuthenticatorOptions } from './authenticator.js';
export { PostgresConfigSchema, createPostgresPool } from './config.js';
export type { PostgresConfig, PostgresConfigInput } from './config.js';
export { MIGRATIONS, SCHEMA_VERSION, migrate, schemaVersion } from './migrations.js';
export type { MigrateOptions, Migration } from './migrations.js';
export { PostgresUserError, addUser, getUser, listUsers, removeUser, setEnabled, setMaildir, setPassword } from './users.js';
export type { PostgresUser, PostgresUserInput } from './users.js';
