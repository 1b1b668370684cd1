import type { FailureKind } from '../errors.js';

/** RFC 2449 §8 / RFC 3206 response codes that Poplar sends. */
export type RespCode = 'IN-USE' | 'LOGIN-DELAY' | 'SYS/TEMP' | 'SYS/PERM' | 'AUTH';

/**
 * "The peer said no": an error that becomes `-ERR [code] message` on the wire.
 * Stores and authenticators throw the protocol-neutral errors of src/errors.ts
 * instead, which respCodeFor maps. Anything else thrown inside a command
 * handler is a server fault and is answered with `-ERR [SYS/TEMP]` without
 * leaking details.
 */
export class Pop3Error extends Error {
  readonly code: RespCode | undefined;
  constructor(message: string, code?: RespCode, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'Pop3Error';
    this.code = code;
  }
}

const CODES: Readonly<Record<FailureKind, RespCode | undefined>> = {
  'in-use': 'IN-USE',
  temporary: 'SYS/TEMP',
  permanent: 'SYS/PERM',
  'auth-failed': 'AUTH',
  'not-found': undefined,
  'message-unavailable': undefined,
  // RFC 3206 §4: SYS/PERM is a permanent problem of the system; a full mailbox stays full until the user acts.
  quota: 'SYS/PERM',
};

/** The POP3 response code for a store's or an authenticator's failure. */
export function respCodeFor(kind: FailureKind): RespCode | undefined {
  return CODES[kind];
}
