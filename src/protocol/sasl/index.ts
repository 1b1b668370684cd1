import { LoginServer } from './login.js';
import type { ServerMechanism } from './mechanism.js';
import { PlainServer } from './plain.js';

export * from './mechanism.js';
export * from './plain.js';
export * from './login.js';
export * from './base64.js';

export interface MechanismInfo {
  readonly name: string;
  /** Sends the password in the clear: needs TLS unless plaintext logins are allowed. */
  readonly plaintext: boolean;
  create(): ServerMechanism;
}

export const SERVER_MECHANISMS: readonly MechanismInfo[] = [
  { name: 'PLAIN', plaintext: true, create: () => new PlainServer() },
  { name: 'LOGIN', plaintext: true, create: () => new LoginServer() },
];
