/**
 * Step 4 of a fetch: decide, from the listing, the ledger and the account's
 * settings, what to delete, what to leave and what to fetch; then (step 5)
 * where each message to fetch goes, by the rules (TOP n 0 where a rule
 * looks at headers).
 */
import { Pop3ServerError } from '../client/errors.js';
import type { Pop3Client } from '../client/pop3-client.js';
import type { UidlEntry } from '../client/reply.js';
import { printable } from '../client/errors.js';
import type { ResolvedAccount } from './config.js';
import type { LedgerEntry } from './ledger.js';
import { chooseDestination, parseHeaders, rulesNeedHeaders, type CompiledRule, type Destination } from './rules.js';

const DAY_MS = 86_400_000;
/** The most a `TOP n 0` reply (the header) may carry, whatever size the message is announced with. */
const TOP_MAX_OCTETS = 1024 * 1024;

/** A message to fetch. `dest` is undefined until the rules have chosen (or when they choose from the message itself). */
export interface Candidate {
  readonly number: number;
  readonly uidl: string;
  readonly size: number;
  dest: Destination | undefined;
}

export interface Plan {
  /** Message numbers to DELE without fetching (in the ledger and may go, or too large to keep). */
  readonly toDelete: number[];
  /** Messages to fetch, in listing order. */
  readonly candidates: Candidate[];
  /** Left on the server for their size (`skip_larger_than`). */
  readonly skipped: number;
}

export type PlanSettings = Pick<ResolvedAccount, 'keep' | 'fetch' | 'delete_after_days' | 'delete_larger_than' | 'skip_larger_than'>;

/**
 * The plan for `usable` (listing order kept). `known` is the ledger's entry
 * for a UIDL; `now` is the fetch clock.
 */
export function planFetch(
  usable: readonly UidlEntry[],
  sizes: ReadonlyMap<number, number>,
  known: (uidl: string) => LedgerEntry | undefined,
  acct: PlanSettings,
  now: number,
): Plan {
  const toDelete: number[] = [];
  const candidates: Candidate[] = [];
  let skipped = 0;
  for (const { number, uid } of usable) {
    const size = sizes.get(number)!;
    const entry = known(uid);
    if (entry !== undefined) {
      const old = acct.delete_after_days !== undefined && now - entry.firstSeen >= acct.delete_after_days * DAY_MS;
      if (!acct.keep || old) toDelete.push(number); // again: an earlier QUIT may never have been answered
      else if (acct.fetch === 'all') candidates.push({ number, uidl: uid, size, dest: undefined });
      continue;
    }
    if (acct.delete_larger_than !== undefined && size > acct.delete_larger_than) {
      toDelete.push(number);
      continue;
    }
    if (acct.skip_larger_than !== undefined && size > acct.skip_larger_than) {
      skipped++;
      continue;
    }
    candidates.push({ number, uidl: uid, size, dest: undefined });
  }
  return { toDelete, candidates, skipped };
}

/**
 * Set each candidate's destination. Rules that look at no header decide
 * from the size alone; otherwise the headers come from `TOP n 0`
 * (pipelined, each reply bounded by `maxOctetsOf` and 1 MiB) with
 * `header_preview = "top"`. Resolves true when the destinations must be
 * chosen from each message as it arrives instead (`header_preview = "retr"`,
 * or a server refusing TOP); they are left undefined then.
 */
export async function chooseDestinations(
  client: Pop3Client,
  candidates: readonly Candidate[],
  rules: readonly CompiledRule[],
  acct: Pick<ResolvedAccount, 'name' | 'header_preview' | 'message_timeout'>,
  maxOctetsOf: (n: number) => number,
  warn: (msg: string) => void,
): Promise<boolean> {
  if (!rulesNeedHeaders(rules) || candidates.length === 0) {
    for (const c of candidates) c.dest = chooseDestination(rules, c.size, undefined);
    return false;
  }
  if (acct.header_preview !== 'top') return true;
  const deadlineMs = acct.message_timeout * 1000;
  try {
    const heads = await Promise.all(candidates.map((c) => client.topBuffer(c.number, 0, { maxOctets: Math.min(maxOctetsOf(c.number), TOP_MAX_OCTETS), deadlineMs })));
    candidates.forEach((c, i) => (c.dest = chooseDestination(rules, c.size, parseHeaders(heads[i]!))));
    return false;
  } catch (e) {
    if (!(e instanceof Pop3ServerError)) throw e;
    warn(`${acct.name}: TOP refused (${printable(e.text)}); reading headers from the messages instead`);
    return true;
  }
}
