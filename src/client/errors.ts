/**
 * The client's error kinds. Two matter most to callers: "the server said no"
 * (Pop3ServerError, the connection is usually still usable) and "the
 * protocol broke" (everything else: the connection is gone).
 */
import type { RespCode } from '../protocol/codes.js';

/** Base class of every error the POP3 client raises itself. */
export class Pop3ClientError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** The server answered `-ERR`. The connection stays usable unless it closed it. */
export class Pop3ServerError extends Pop3ClientError {
  /** A response code this client knows (RFC 2449 §8, RFC 3206); sub-codes map to their known parent. */
  readonly code: RespCode | undefined;
  /** The code exactly as sent (`SYS/TEMP/X`, or one this client does not know), without brackets. */
  readonly rawCode: string | undefined;
  /** The reply text after the code. */
  readonly text: string;
  /** The command that was refused (without arguments, which may hold secrets). */
  readonly command: string;
  /** For bearer-token mechanisms: the server's JSON error challenge (RFC 7628 §3.2.2). */
  readonly saslError: string | undefined;

  constructor(
    command: string,
    reply: { readonly code: RespCode | undefined; readonly rawCode: string | undefined; readonly text: string },
    saslError?: string,
  ) {
    super(`${command}: -ERR ${reply.rawCode !== undefined ? `[${printable(reply.rawCode)}] ` : ''}${printable(reply.text)}`.trimEnd());
    this.command = command;
    this.code = reply.code;
    this.rawCode = reply.rawCode;
    this.text = reply.text;
    this.saslError = saslError;
  }
}

/** The protocol broke: a malformed reply, unexpected data, or the connection closed mid-reply. */
export class Pop3ProtocolError extends Pop3ClientError {}

/** The server closed or reset the connection before its reply was complete (a Pop3ProtocolError). */
export class Pop3ConnectionLostError extends Pop3ProtocolError {}

/**
 * A reply ran past a bound the caller set (or the default one): more octets
 * or lines than `maxOctets`/`maxLines`, or more SASL challenges than any
 * mechanism needs. The connection was destroyed (a Pop3ProtocolError).
 */
export class Pop3LimitError extends Pop3ProtocolError {}

/** The server stayed silent for longer than the call's `timeoutMs`; the connection was destroyed. */
export class Pop3TimeoutError extends Pop3ClientError {}

/** The call's AbortSignal fired; the connection was destroyed. `cause` is the signal's reason. */
export class Pop3AbortError extends Pop3ClientError {}

/** TLS could not be established or the server's certificate was not accepted (CA, host name, pin). */
export class Pop3TlsError extends Pop3ClientError {}

/**
 * The client refused to do something unsafe or impossible: send a cleartext
 * password without TLS to a non-loopback host, or log in when no mechanism
 * both sides support is left. Nothing was sent; the connection is usable.
 */
export class Pop3PolicyError extends Pop3ClientError {}

/** Server text as it may appear in a message or a log line: control characters replaced, at most 200 characters. */
export function printable(s: string): string {
  const clean = s.replace(/[\x00-\x1f\x7f-\x9f\u200e\u200f\u2028-\u202e\u2066-\u2069]/g, '?'); // controls, line breaks, bidi overrides
  return clean.length > 200 ? `${clean.slice(0, 200)}…` : clean;
}
