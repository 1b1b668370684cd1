/**
 * The `poplar` package: the POP3 server, the Maildir and PostgreSQL stores, the
 * authenticators, and the contracts a new store or authenticator implements
 * (docs/architecture.md). The POP3 client alone is `poplar/client`
 * (src/client/index.ts, docs/client.md).
 */
import { ConfigSchema } from './config/schema.js';
import type { ServerSettings } from './server/context.js';

export { Pop3Server, type Pop3ServerOptions, type ListenSpec, type BoundListener, type TlsMaterial } from './server/server.js';
export type { ServerSettings } from './server/context.js';
export type { ServerObserver, SessionObserver, SessionControl, LoginFailure } from './server/observer.js';
export type { ClientInfo } from './server/client-info.js';

export type { MailStore, Maildrop, MessageInfo, CommitOptions } from './store/types.js';
export { MaildirStore, type MaildirStoreOptions } from './store/maildir/maildir-store.js';
export { PostgresStore, type PostgresStoreOptions, type PostgresStoreConfigInput } from './store/postgres/index.js';
export type { MigratableStore, MigrationSource, MigrationTarget, MigratedMessage } from './store/migration.js';

export type { Authenticator, Principal, Credentials, ConnectionInfo } from './auth/types.js';
export { PasswdFileAuthenticator, type PasswdFileAuthenticatorOptions } from './auth/passwd-file/authenticator.js';
export { PostgresAuthenticator, createPostgresPool, migrate, type PostgresAuthenticatorOptions, type PostgresConfigInput } from './auth/postgres/index.js';
export { OAuthAuthenticator, type OAuthOptions, type OAuthRuntimeOptions } from './auth/oauth/index.js';
export { ChainAuthenticator, type ChainAuthenticatorOptions, type ChainMember, type CredentialKind } from './auth/chain.js';

export {
  MailError,
  InUseError,
  TemporaryFailure,
  PermanentFailure,
  AuthenticationFailed,
  NotFoundError,
  MessageUnavailable,
  QuotaExceeded,
  type FailureKind,
} from './errors.js';

export { createLogger, silentLogger, type Logger } from './observability/log.js';

/** The `[server]` settings of an empty configuration file (docs/configuration.md), with `overrides` on top. */
export function defaultServerSettings(overrides: Partial<ServerSettings> = {}): ServerSettings {
  return { ...ConfigSchema.parse({}).server, ...overrides };
}
