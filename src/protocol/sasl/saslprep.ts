/**
 * SASLprep (RFC 4013) for user names and passwords.
 *
 * Both are prepared as "query" strings (unassigned code points allowed), as
 * RFC 5802 §5.1 asks of SCRAM user names. Prohibited output (control
 * characters, RFC 3454 bidi violations, ...) yields undefined: the caller
 * refuses the exchange.
 */
import { saslprep as prep } from '@mongodb-js/saslprep';

export function saslPrep(input: string): string | undefined {
  try {
    return prep(input, { allowUnassigned: true });
  } catch {
    return undefined;
  }
}
