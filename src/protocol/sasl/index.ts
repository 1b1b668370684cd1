import { LoginServer } from './login.js';
import type { SaslServerContext, ServerMechanism } from './mechanism.js';
import { PlainServer } from './plain.js';

export * from './mechanism.js';
export * from './plain.js';
export * from './login.js';
export * from './base64.js';

export interface MechanismInfo {
  readonly name: string;
  /** Sends the password in the clear: needs TLS unless plaintext logins are allowed. */
  readonly plaintext: boolean;
  create(ctx: SaslServerContext): ServerMechanism;
  /**
   * For bearer-token mechanisms: the error challenge sent when the token is
   * refused (RFC 7628 §3.2.2); the client's answer is read, then `-ERR`.
   */
  readonly failureChallenge?: () => Buffer;
  /** Only offered when the connection can serve it (e.g. EXTERNAL needs a client certificate). */
  available?(ctx: SaslServerContext): boolean;
}

export const SERVER_MECHANISMS: readonly MechanismInfo[] = [
  { name: 'PLAIN', plaintext: true, create: () => new PlainServer() },
  { name: 'LOGIN', plaintext: true, create: () => new LoginServer() },
];
