/**
 * Login policy as pure functions: which mechanism to use, and whether a
 * password may go out in the clear. Kept apart from the wire so the
 * decisions can be tested exhaustively.
 */
import net from 'node:net';

/** Ways to log in this client knows, strongest first (APOP only on request). */
export const LOGIN_PREFERENCE = [
  'SCRAM-SHA-256-PLUS',
  'SCRAM-SHA-1-PLUS',
  'SCRAM-SHA-256',
  'SCRAM-SHA-1',
  'CRAM-MD5',
  'PLAIN',
  'LOGIN',
  'USER',
] as const;

/** Methods that put the password (or a bearer token) on the wire as is. */
const CLEARTEXT = new Set(['PLAIN', 'LOGIN', 'USER', 'XOAUTH2', 'OAUTHBEARER']);

export function sendsCleartextSecret(method: string): boolean {
  return CLEARTEXT.has(method.toUpperCase());
}

/** An address that never leaves the machine: 127.0.0.0/8, ::1, IPv4-mapped 127.x, or the name `localhost`. */
export function isLoopback(hostOrAddress: string): boolean {
  let h = hostOrAddress.toLowerCase();
  if (h.startsWith('[') && h.endsWith(']')) h = h.slice(1, -1);
  if (h === 'localhost' || h.endsWith('.localhost')) return true;
  if (h.startsWith('::ffff:')) h = h.slice(7);
  if (net.isIPv4(h)) return h.split('.')[0] === '127';
  if (net.isIPv6(h)) return /^(0{0,4}:){2,7}0{0,3}1$/.test(h) || h === '::1';
  return false;
}

export interface CleartextContext {
  /** TLS is active on the connection. */
  readonly secure: boolean;
  /** The address actually connected to (preferred) or the host name asked for. */
  readonly peer: string;
  /** The caller's explicit permission. */
  readonly allowPlaintextPassword: boolean;
}

/** Whether a secret may be sent as is: under TLS, to a loopback peer, or when the caller allowed it. */
export function cleartextAllowed(ctx: CleartextContext): boolean {
  return ctx.secure || ctx.allowPlaintextPassword || isLoopback(ctx.peer);
}

export interface MechanismChoiceInput {
  /** The `SASL` capability's mechanisms (any case); empty when none were announced. */
  readonly saslMechanisms: readonly string[];
  /** The server announced `USER`, or announced nothing at all (RFC 1939 servers without CAPA). */
  readonly userPass: boolean;
  /** Channel-binding data is available (TLS 1.2 tls-unique or TLS 1.3 tls-exporter). */
  readonly channelBinding: boolean;
  readonly cleartextAllowed: boolean;
}

export type MechanismChoice =
  | { readonly ok: true; readonly method: (typeof LOGIN_PREFERENCE)[number] }
  /** `refusedCleartext`: something was offered but only as cleartext, which is not allowed here. */
  | { readonly ok: false; readonly refusedCleartext: boolean };

/** The strongest method both sides support that the policy allows. */
export function chooseLoginMethod(input: MechanismChoiceInput): MechanismChoice {
  const offered = new Set(input.saslMechanisms.map((m) => m.toUpperCase()));
  if (input.userPass) offered.add('USER');
  let refusedCleartext = false;
  for (const method of LOGIN_PREFERENCE) {
    if (!offered.has(method)) continue;
    if (method.endsWith('-PLUS') && !input.channelBinding) continue;
    if (sendsCleartextSecret(method) && !input.cleartextAllowed) {
      refusedCleartext = true;
      continue;
    }
    return { ok: true, method };
  }
  return { ok: false, refusedCleartext };
}
