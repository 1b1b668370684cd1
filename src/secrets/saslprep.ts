/**
 * SASLprep (RFC 4013) for user names and passwords.
 *
 * Both are prepared as "query" strings (unassigned code points allowed), as
 * RFC 5802 §5.1 asks of SCRAM user names. Prohibited output (control
 * characters, RFC 3454 bidi violations, ...) yields undefined: the caller
 * refuses the exchange.
 *
 * The library builds its Unicode tables when it is loaded (about 13 ms), so
 * it is loaded on first use: `poplar fetch` with USER/PASS never needs it.
 */
import { createRequire } from 'node:module';

type Prep = (input: string, opts: { allowUnassigned: boolean }) => string;
let prep: Prep | undefined;

export function saslPrep(input: string): string | undefined {
  prep ??= (createRequire(import.meta.url)('@mongodb-js/saslprep') as { saslprep: Prep }).saslprep;
  try {
    return prep(input, { allowUnassigned: true });
  } catch {
    return undefined;
  }
}
