/** The exit code for a failed migration of one user, like the other commands (src/cli/exit-codes.ts). */
import { EX_CONFIG, EX_DATAERR, EX_NOUSER, EX_SOFTWARE, EX_TEMPFAIL } from '../cli/exit-codes.js';
import { ConfigError } from '../config/errors.js';
import { MailError } from '../errors.js';
import { classify } from '../fetch/exit-status.js';

export function exitCodeOf(e: unknown): number {
  if (e instanceof ConfigError) return EX_CONFIG;
  if (e instanceof MailError) {
    if (e.kind === 'in-use' || e.kind === 'temporary') return EX_TEMPFAIL;
    if (e.kind === 'not-found') return EX_NOUSER;
    if (e.kind === 'permanent') return /no maildrop|no such|does not exist/i.test(e.message) ? EX_NOUSER : EX_DATAERR;
    return EX_TEMPFAIL;
  }
  if (e instanceof Error && e.name === 'AbortError') return EX_TEMPFAIL;
  const f = classify(e);
  return f.exitCode === EX_SOFTWARE && e instanceof RangeError ? EX_DATAERR : f.exitCode;
}
