import type tls from 'node:tls';
import type { Authenticator } from '../auth/types.js';
import type { ResolvedConfig } from '../config/load.js';
import type { Logger } from '../observability/log.js';
import type { LoginDelayPolicy } from './login-delay.js';
import type { LoginThrottle, RecentMaximum } from '../auth/throttle.js';
import type { MechanismInfo } from '../protocol/sasl/index.js';
import type { ServerNameCallback } from './tls-accept.js';

/** The settings a session reads; a subset of the config so tests can build one directly. */
export type ServerSettings = ResolvedConfig['server'];

/**
 * Everything the login half of a session needs from the server around it.
 * There is no store here: before the hand-off (handoff.ts) no code can reach a maildrop.
 */
export interface LoginContext {
  readonly settings: ServerSettings;
  readonly authenticator: Authenticator;
  /** For internal errors only; what a session does is told to its observer. */
  readonly logger: Logger;
  /** SASL mechanisms on offer, in CAPA order. */
  readonly mechanisms: readonly MechanismInfo[];
  /** Failure counters and delays (brute-force resistance). */
  readonly throttle: LoginThrottle;
  /** How long recent login decisions took: the least time before any failure is answered. */
  readonly decisionTimes: RecentMaximum;
  /** Present when LOGIN-DELAY is configured. */
  readonly loginDelay?: LoginDelayPolicy | undefined;
  /** The current certificate for STLS (re-read on SIGHUP), or null when TLS is not configured. */
  tlsContext(): tls.SecureContext | null;
  /** Chooses a certificate by the client's server name (SNI), when any is configured per name. */
  tlsServerName(): ServerNameCallback | undefined;
  /** Whether TLS handshakes ask for a client certificate (SASL EXTERNAL). */
  requestClientCertificate(): boolean;
}
