/** RFC 2449 §8 / RFC 3206 response codes that Poplar sends. */
export type RespCode = 'IN-USE' | 'LOGIN-DELAY' | 'SYS/TEMP' | 'SYS/PERM' | 'AUTH';

/**
 * "The peer said no": an error that becomes `-ERR [code] message` on the wire.
 * Anything else thrown inside a command handler is a server fault and is
 * answered with `-ERR [SYS/TEMP]` without leaking details.
 */
export class Pop3Error extends Error {
  readonly code: RespCode | undefined;
  constructor(message: string, code?: RespCode, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'Pop3Error';
    this.code = code;
  }
}
