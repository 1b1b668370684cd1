/**
 * Step 3 of a fetch: settle the deliveries an interrupted run left pending
 * (an intent in the ledger, no record). Each is fetched again into an
 * unnamed file next to the ledger, never into memory (a pending message may
 * be of any size), and the sinks it may have reached are asked whether they
 * hold it (`Sink.findDelivered`; see reconcile.ts). What they hold is
 * recorded; the rest is forgotten and delivered again like a new message.
 */
import path from 'node:path';
import type { Pop3Client } from '../client/index.js';
import type { SinkFor } from './account-sinks.js';
import type { ResolvedAccount } from './config.js';
import type { Ledger, PendingDelivery } from './ledger.js';
import { DEFAULT_DESTINATION, type Destination } from './rules.js';
import type { MessageSource } from './sinks/types.js';
import { spoolMessage, type SpooledMessage } from './sinks/util.js';

export interface SettleInput {
  readonly client: Pop3Client;
  readonly ledger: Ledger;
  readonly acct: ResolvedAccount;
  /** UIDL → message number, for the usable listings of this session. */
  readonly byUidl: ReadonlyMap<string, number>;
  /** What message `n` may carry (its RETR bound). */
  readonly maxOctetsOf: (n: number) => number;
  readonly sinkFor: SinkFor;
  /** The fetch clock, for the records. */
  readonly now: () => number;
  readonly signal?: AbortSignal | undefined;
}

export interface Settled {
  /** Pending deliveries whose message the server still lists. */
  readonly pending: number;
  /** Of those, found delivered (now recorded). */
  readonly found: number;
}

/** Re-check the pending deliveries whose message is still on the server; the ledger is synced after. */
export async function settlePending(input: SettleInput): Promise<Settled> {
  const { client, ledger, acct, byUidl } = input;
  const pending = ledger.pending().filter((p) => byUidl.has(p.uidl));
  if (pending.length === 0) return { pending: 0, found: 0 };
  const spools: SpooledMessage[] = [];
  try {
    const deadlineMs = acct.message_timeout * 1000;
    for (const p of pending) {
      const n = byUidl.get(p.uidl)!;
      const stream = await client.retr(n, { maxOctets: input.maxOctetsOf(n), deadlineMs });
      spools.push(await spoolMessage(stream, path.dirname(acct.state), input.signal));
    }
    const found = await findDelivered(
      pending.map((p, i) => ({ ...p, content: spools[i]! })),
      acct,
      input.sinkFor,
    );
    await ledger.record([...found].map((uidl) => ({ uidl })), input.now());
    await ledger.sync();
    ledger.abandon(pending.map((p) => p.uidl).filter((u) => !found.has(u)));
    return { pending: pending.length, found: found.size };
  } finally {
    await Promise.all(spools.map((sp) => sp.close()));
  }
}

/**
 * Ask the sinks which pending deliveries arrived. A message whose
 * destination was decided while reading it (target `*`) may be in any sink
 * of the account: the sinks are asked in turn, each about what the earlier
 * ones did not find, so identical copies still count once each. A sink
 * without a probe finds nothing: its pending messages are delivered again.
 */
export async function findDelivered(pending: readonly (PendingDelivery & { content: MessageSource })[], acct: ResolvedAccount, sinkFor: SinkFor): Promise<Set<string>> {
  // sink key → its destination, and per pending UIDL the folders it may be in there
  const bySink = new Map<string, { dest: Destination; asks: Map<string, { p: (typeof pending)[number]; folders: Set<string | undefined> }> }>();
  for (const p of pending) {
    for (const place of placesFor(p.target, acct)) {
      const key = place.dest.kind === 'sink' ? place.dest.key : '-';
      let s = bySink.get(key);
      if (s === undefined) bySink.set(key, (s = { dest: place.dest, asks: new Map() }));
      let ask = s.asks.get(p.uidl);
      if (ask === undefined) s.asks.set(p.uidl, (ask = { p, folders: new Set() }));
      for (const f of place.folders) ask.folders.add(f);
    }
  }
  const found = new Set<string>();
  for (const { dest, asks } of bySink.values()) {
    const left = [...asks.values()].filter((a) => !found.has(a.p.uidl));
    if (left.length === 0) continue;
    const sink = await sinkFor(dest);
    if (sink.findDelivered === undefined) continue;
    const here = await sink.findDelivered(left.map(({ p, folders }) => ({ uidl: p.uidl, since: p.since, folders: [...folders], content: p.content })));
    for (const a of left) if (here.has(a.p.uidl)) found.add(a.p.uidl);
  }
  return found;
}

/** Where a pending delivery may have gone: a sink (as a destination) and, in the account's own sink, which folders. */
export function placesFor(target: string, acct: Pick<ResolvedAccount, 'rule'>): { dest: Destination; folders: (string | undefined)[] }[] {
  const ruleSink = (r: ResolvedAccount['rule'][number]): { dest: Destination; folders: (string | undefined)[] } => ({
    dest: { kind: 'sink', key: r.sinkKey!, spec: r.sink! },
    folders: [undefined],
  });
  if (target === '-') return [{ dest: DEFAULT_DESTINATION, folders: [undefined] }];
  if (target.startsWith('folder:')) {
    try {
      return [{ dest: DEFAULT_DESTINATION, folders: [decodeURIComponent(target.slice(7))] }];
    } catch {
      return []; // not written by this program
    }
  }
  if (target === '*') {
    // Decided while reading the message: any destination of the account.
    const folders = [undefined, ...acct.rule.flatMap((r) => (r.folder !== undefined ? [r.folder] : []))];
    return [{ dest: DEFAULT_DESTINATION, folders }, ...acct.rule.filter((r) => r.sink !== undefined && r.sinkKey !== undefined).map(ruleSink)];
  }
  // A rule's sink; one no longer in the configuration cannot be asked.
  const rule = acct.rule.find((r) => r.sinkKey === target && r.sink !== undefined);
  return rule !== undefined ? [ruleSink(rule)] : [];
}
