/** What went wrong in a fetch, as a sysexits.h code and a short kind (docs/fetch.md, "Exit codes"). */
import { Pop3AbortError, Pop3ConnectionLostError, Pop3LimitError, Pop3PolicyError, Pop3ProtocolError, Pop3ServerError, Pop3TimeoutError, Pop3TlsError } from '../client/errors.js';
import { EX_CONFIG, EX_IOERR, EX_NOHOST, EX_NOPERM, EX_PROTOCOL, EX_SOFTWARE, EX_TEMPFAIL, EX_UNAVAILABLE } from '../cli/exit-codes.js';
import { ConfigError } from '../config/errors.js';
import { CredentialError } from './credentials.js';
import { LedgerBusyError, LedgerError } from './ledger.js';
import { FetchProtocolError } from './session.js';

export type FailureKind = 'config' | 'credentials' | 'auth' | 'tls' | 'connect' | 'temporary' | 'protocol' | 'sink' | 'ledger' | 'interrupted' | 'internal';

export interface Failure {
  readonly exitCode: number;
  readonly kind: FailureKind;
  readonly message: string;
}

const AUTH_COMMANDS = new Set(['AUTH', 'USER', 'PASS', 'APOP']);
const TEMPORARY_CODES = new Set(['IN-USE', 'LOGIN-DELAY', 'SYS/TEMP']);

export function classify(e: unknown): Failure {
  const message = e instanceof Error ? e.message : String(e);
  const f = (exitCode: number, kind: FailureKind): Failure => ({ exitCode, kind, message });
  if (e instanceof ConfigError) return f(EX_CONFIG, 'config');
  if (e instanceof CredentialError) return e.temporary ? f(EX_TEMPFAIL, 'credentials') : f(EX_CONFIG, 'credentials');
  if (e instanceof LedgerBusyError) return f(EX_TEMPFAIL, 'ledger');
  if (e instanceof LedgerError) return f(EX_IOERR, 'ledger');
  if (e instanceof Pop3TlsError) return f(EX_UNAVAILABLE, 'tls');
  if (e instanceof Pop3PolicyError) return f(EX_CONFIG, 'config');
  if (e instanceof Pop3ServerError) {
    if (e.code !== undefined && TEMPORARY_CODES.has(e.code)) return f(EX_TEMPFAIL, 'temporary');
    if (AUTH_COMMANDS.has(e.command)) return f(EX_NOPERM, 'auth');
    if (e.command === 'greeting') return f(EX_UNAVAILABLE, 'connect');
    if (e.command === 'QUIT') return f(EX_TEMPFAIL, 'temporary');
    return f(EX_PROTOCOL, 'protocol');
  }
  if (e instanceof Pop3TimeoutError) return f(EX_TEMPFAIL, 'temporary');
  if (e instanceof Pop3AbortError) return f(EX_TEMPFAIL, 'interrupted');
  // The server went away mid-reply, or sent more than it announced or than the limits allow:
  // nothing of that reply was delivered, and the next fetch tries again.
  if (e instanceof Pop3ConnectionLostError || e instanceof Pop3LimitError) return f(EX_TEMPFAIL, 'temporary');
  if (e instanceof Pop3ProtocolError) {
    if (message.startsWith('cannot connect')) {
      const code = (e.cause as NodeJS.ErrnoException | undefined)?.code;
      return code === 'ENOTFOUND' || code === 'EAI_NONAME' ? f(EX_NOHOST, 'connect') : f(EX_UNAVAILABLE, 'connect');
    }
    return f(EX_PROTOCOL, 'protocol');
  }
  if (e instanceof FetchProtocolError) return f(EX_PROTOCOL, 'protocol');
  if (e instanceof Error && e.name === 'SinkError') return (e as { temporary?: boolean }).temporary === true ? f(EX_TEMPFAIL, 'sink') : f(EX_IOERR, 'sink');
  if (e instanceof Error && typeof (e as NodeJS.ErrnoException).code === 'string' && (e as NodeJS.ErrnoException).syscall !== undefined) return f(EX_IOERR, 'sink');
  return f(EX_SOFTWARE, 'internal');
}
