/**
 * One fetch of one account: connect, log in, list, settle what a crash left
 * pending, deliver what is new, record it, delete what may go, QUIT.
 *
 * The order per message is the feature (DESIGN.md, "Durability rules"):
 *
 *   intent in the ledger (synced) → RETR → sink.deliver → sink.flush (durable)
 *   → UIDL recorded in the ledger (synced) → DELE → QUIT +OK
 *
 * Intents and records are group-committed: one ledger fsync and one sink
 * flush per `batch` messages (or `batch_ms`), while RETRs stay pipelined.
 * Records are grouped only for sinks that can be asked after a crash whether
 * a message arrived (`Sink.findDelivered`: Maildir, mbox); a delivery to any
 * other sink (MDA, LMTP) is recorded, and the record synced, as soon as the
 * sink has accepted it, so a crash can repeat at most that one message there.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import { isValidUid, Pop3Client, Pop3LimitError, Pop3ServerError, type UidlEntry } from '../client/index.js';
import { printable } from '../client/errors.js';
import type { ResolvedAccount, SinkSpecValue } from './config.js';
import { CredentialError, readSecret, TokenSource } from './credentials.js';
import { Ledger, type PendingDelivery } from './ledger.js';
import { chooseDestination, compileRules, DEFAULT_DESTINATION, destinationKey, parseHeaders, rulesNeedHeaders, type Destination } from './rules.js';
import type { DeliveryInfo, MessageSource, Sink } from './sinks/types.js';
import { spoolMessage, type SpooledMessage } from './sinks/util.js';

const DAY_MS = 86_400_000;
/** Intents are written (and synced) for this many messages at a time. */
const INTENTS_AHEAD = 64;
/** Messages up to this size (as announced) may be delivered in parallel, read into memory first. */
const PARALLEL_MAX_OCTETS = 256 * 1024;
/** A server whose announced size was too small gets streamed delivery beyond this much. */
const PARALLEL_BUFFER_CAP = 1024 * 1024;
/** How much of a message `header_preview = "retr"` reads to find the end of the header. */
const HEADER_PEEK_LIMIT = 256 * 1024;
/** The most a `TOP n 0` reply (the header) may carry, whatever size the message is announced with. */
const TOP_MAX_OCTETS = 1024 * 1024;

export interface AccountReport {
  readonly account: string;
  ok: boolean;
  /** sysexits code for this account (0 when ok). */
  exitCode: number;
  error?: string;
  /** Messages the server listed. */
  onServer: number;
  /** Messages not in the ledger (or all, with fetch = "all") that were candidates for delivery. */
  candidates: number;
  delivered: number;
  discarded: number;
  skipped: number;
  /** Deletions the server confirmed (QUIT answered +OK). */
  deleted: number;
  /** Octets delivered (as the server announced them). */
  bytes: number;
  /** Pending deliveries from an interrupted run found delivered (recorded, not fetched again). */
  recovered: number;
  /** Interrupted by a stop request after finishing a message. */
  stopped: boolean;
  elapsedMs: number;
}

export interface ProgressListener {
  accountStarted?(account: string, messages: number, octets: number): void;
  messageDone?(account: string, octets: number): void;
}

export interface SessionDeps {
  createSink(spec: SinkSpecValue, account: ResolvedAccount): Promise<Sink> | Sink;
  /** The fetch clock: first-seen times and delete_after_days (injectable for tests). */
  now(): number;
  /** Soft stop: finish the current message, commit, QUIT. */
  stop?: AbortSignal;
  /** Hard stop: drop the connection. */
  signal?: AbortSignal;
  progress?: ProgressListener;
  env?: NodeJS.ProcessEnv;
  /** fsync the ledger (default true). */
  fsync?: boolean;
  /** Token sources by account name, kept across fetches (the daemon reuses cached tokens); created on first use. */
  tokenSources?: Map<string, TokenSource>;
  log?: (level: 'info' | 'warn', msg: string) => void;
}

/** Raised inside the delivery loop when a stop was requested; never escapes fetchAccount. */
class StopRequested extends Error {}

/** The server cannot do what a safe fetch needs (UIDL). */
export class FetchProtocolError extends Error {
  override name = 'FetchProtocolError';
}

interface Candidate {
  readonly number: number;
  readonly uidl: string;
  readonly size: number;
  dest: Destination | undefined;
}

export function newReport(account: string): AccountReport {
  return { account, ok: false, exitCode: 0, onServer: 0, candidates: 0, delivered: 0, discarded: 0, skipped: 0, deleted: 0, bytes: 0, recovered: 0, stopped: false, elapsedMs: 0 };
}

/**
 * Fetch one account once. Resolves with the report on success; on failure
 * rejects with the error, after committing every delivery that completed
 * (and `report` holds the counts so far).
 */
export async function fetchAccount(acct: ResolvedAccount, deps: SessionDeps, report: AccountReport = newReport(acct.name)): Promise<AccountReport> {
  const started = performance.now();
  const env = deps.env ?? process.env;
  const log = deps.log ?? (() => undefined);
  const rules = compileRules(acct.rule);
  const needHeaders = rulesNeedHeaders(rules);
  const deleteDelivered = !acct.keep || acct.delete_after_days === 0;

  const ledger = await Ledger.open(acct.state, { fsync: deps.fsync ?? true });
  const sinks = new Map<string, Promise<Sink>>();
  let client: Pop3Client | undefined;
  try {
    // Secrets first: a missing one is a configuration problem, found before any connection.
    const password = acct.oauth2 === undefined ? await readSecret({ value: acct.password, env: acct.password_env, command: acct.password_command }, 'password', env, deps.signal) : undefined;
    const ca = acct.ca !== undefined ? await readFile(acct.ca).catch((e: NodeJS.ErrnoException) => Promise.reject(new CredentialError(`cannot read CA file ${acct.ca!}: ${e.code ?? e.message}`, false))) : undefined;

    client = await Pop3Client.connect({
      host: acct.host,
      port: acct.port,
      tls: acct.tls,
      ca,
      fingerprint: acct.fingerprint,
      insecure: acct.insecure,
      servername: acct.servername,
      timeoutMs: acct.timeout * 1000,
      deadlineMs: acct.message_timeout * 1000, // every reply, from the greeting on: a server trickling a line a byte at a time is cut off too
      signal: deps.signal,
      allowPlaintextPassword: acct.allow_plaintext_password,
    });
    if (password !== undefined) {
      await client.login(acct.user, password, { mechanism: acct.auth });
    } else {
      let tokens = deps.tokenSources?.get(acct.name);
      if (tokens === undefined) {
        tokens = new TokenSource(acct.oauth2!, { env, cacheFile: `${acct.state}.token` });
        deps.tokenSources?.set(acct.name, tokens);
      }
      const mechanism = acct.oauth2!.mechanism ?? (acct.auth === 'XOAUTH2' || acct.auth === 'OAUTHBEARER' ? acct.auth : undefined);
      const first = await tokens.get(deps.signal);
      try {
        await client.loginOAuth2(acct.user, first.token, { mechanism });
      } catch (e) {
        // A cached token the server refuses (revoked early): one fresh one.
        if (!(e instanceof Pop3ServerError) || !first.cached) throw e;
        await client.loginOAuth2(acct.user, (await tokens.get(deps.signal, true)).token, { mechanism });
      }
    }

    const deadlineMs = acct.message_timeout * 1000;
    const listing = { maxLines: acct.max_list_lines, maxOctets: acct.max_list_octets, deadlineMs };
    let listed;
    try {
      listed = await client.uidl(listing);
    } catch (e) {
      if (e instanceof Pop3ServerError) throw new FetchProtocolError(`${acct.host} does not support UIDL, which a safe fetch needs (${printable(e.text)})`);
      throw listingLimit(e);
    }
    const sizes = new Map((await client.list(listing).catch((e: unknown) => Promise.reject(listingLimit(e)))).map((l) => [l.number, l.octets]));
    report.onServer = listed.length;
    const uidls = usableListings(listed, sizes, (number, why) => {
      report.skipped++;
      log('warn', `${acct.name}: message ${number} left on the server: ${why}`);
    });
    const byUidl = new Map(uidls.map((u) => [u.uid, u.number]));
    /** What a message may carry: its announced size plus the margin (docs/fetch.md, "Limits"). */
    const allowed = (n: number): number => {
      const size = sizes.get(n) ?? 0;
      return size + Math.max(acct.size_margin, Math.ceil(size / 10));
    };
    // Entries whose message is gone are forgotten (keeping them until now is what makes a lost QUIT harmless).
    // A UIDL left out above for a fault of this session's listing (listed twice, no size) is still on the server.
    await ledger.retainOnly(new Set(listed.filter((u) => isValidUid(u.uid)).map((u) => u.uid)));

    const sinkFor = (dest: Destination): Promise<Sink> => {
      const key = dest.kind === 'sink' ? dest.key : '-';
      let s = sinks.get(key);
      if (s === undefined) {
        s = Promise.resolve(deps.createSink(dest.kind === 'sink' ? dest.spec : acct.sink, acct));
        s.catch(() => undefined);
        sinks.set(key, s);
      }
      return s;
    };

    // ---- settle deliveries an interrupted run left pending: ask their sinks (see reconcile.ts)
    // Each is fetched again into an unnamed file next to the ledger, never into memory: a pending message may be of any size.
    const pending = ledger.pending().filter((p) => byUidl.has(p.uidl));
    if (pending.length > 0) {
      const spools: SpooledMessage[] = [];
      try {
        for (const p of pending) {
          const n = byUidl.get(p.uidl)!;
          const stream = await client.retr(n, { maxOctets: allowed(n), deadlineMs });
          spools.push(await spoolMessage(stream, path.dirname(acct.state), deps.signal));
        }
        const found = await findDelivered(pending.map((p, i) => ({ ...p, content: spools[i]! })), acct, sinkFor);
        await ledger.record([...found].map((uidl) => ({ uidl })), deps.now());
        await ledger.sync();
        ledger.abandon(pending.map((p) => p.uidl).filter((u) => !found.has(u)));
        report.recovered = found.size;
        if (found.size > 0 || pending.length > found.size) {
          log('info', `${acct.name}: ${pending.length} deliveries were interrupted; ${found.size} had arrived, ${pending.length - found.size} will be fetched again`);
        }
      } finally {
        await Promise.all(spools.map((sp) => sp.close()));
      }
    }

    // ---- plan
    const now = deps.now();
    const toDelete: number[] = [];
    const candidates: Candidate[] = [];
    for (const { number, uid } of uidls) {
      const size = sizes.get(number)!;
      const entry = ledger.get(uid);
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
        report.skipped++;
        continue;
      }
      candidates.push({ number, uidl: uid, size, dest: undefined });
    }
    report.candidates = candidates.length;

    // ---- rules: headers via TOP where asked, pipelined
    let peek = false;
    if (needHeaders && candidates.length > 0) {
      if (acct.header_preview === 'top') {
        try {
          const heads = await Promise.all(candidates.map((c) => client!.topBuffer(c.number, 0, { maxOctets: Math.min(allowed(c.number), TOP_MAX_OCTETS), deadlineMs })));
          candidates.forEach((c, i) => (c.dest = chooseDestination(rules, c.size, parseHeaders(heads[i]!))));
        } catch (e) {
          if (!(e instanceof Pop3ServerError)) throw e;
          log('warn', `${acct.name}: TOP refused (${printable(e.text)}); reading headers from the messages instead`);
          peek = true;
        }
      } else peek = true;
    } else for (const c of candidates) c.dest = chooseDestination(rules, c.size, undefined);

    const deles: Promise<boolean>[] = [];
    const dele = (n: number): void => {
      deles.push(client!.dele(n).then(() => true, () => false));
    };
    for (const n of toDelete) dele(n);

    // ---- deliver with group commit
    const discardedNow = candidates.filter((c) => c.dest?.kind === 'discard');
    const fetchList = candidates.filter((c) => c.dest?.kind !== 'discard');
    deps.progress?.accountStarted?.(acct.name, fetchList.length, fetchList.reduce((t, c) => t + c.size, 0));
    /** Done since the last commit; `recorded`: already recorded and synced on its own (a sink without a probe). */
    let group: { uidl: string; number: number; discarded: boolean; recorded?: boolean }[] = discardedNow.map((c) => ({ uidl: c.uidl, number: c.number, discarded: true }));
    let groupStart = performance.now();
    const usedSinks = new Set<Sink>();
    // Small messages bound for a Maildir are read into memory and written by up to `parallel`
    // deliveries at once (file creation is the cost there); the socket keeps streaming meanwhile.
    const inflight = new Set<Promise<void>>();
    let asyncError: unknown;
    const drain = async (): Promise<void> => {
      while (inflight.size > 0) await Promise.all([...inflight]);
    };
    /**
     * Everything delivered so far: durable in the sink, then durable in the
     * ledger, then DELE. Commits are chained (the ledger sees them in order)
     * and run while the next group is being delivered: a flush covers exactly
     * the deliveries that completed before it was called.
     */
    let committing: Promise<void> = Promise.resolve();
    const commit = async (wait: boolean): Promise<void> => {
      await drain();
      const items = group;
      group = [];
      const sinksNow = [...usedSinks];
      const previous = committing;
      committing = (async () => {
        await previous;
        if (items.length === 0) return;
        await Promise.all(sinksNow.map((s) => s.flush?.()));
        await ledger.record(items.filter((i) => i.recorded !== true), deps.now());
        await ledger.sync();
        report.delivered += items.filter((i) => !i.discarded).length;
        report.discarded += items.filter((i) => i.discarded).length;
        if (deleteDelivered) for (const it of items) dele(it.number);
      })();
      committing.catch(() => undefined); // awaited by the next commit; not an unhandled rejection meanwhile
      // At most one commit runs behind the deliveries; a failed one stops the fetch.
      if (wait) await committing;
      else await previous;
    };
    const deliverTo = async (c: Candidate, dest: Destination, message: Readable | Buffer): Promise<void> => {
      const sink = await sinkFor(dest);
      usedSinks.add(sink);
      const info: DeliveryInfo = { account: acct.name, uidl: c.uidl, size: c.size, ...(dest.kind === 'folder' ? { folder: dest.folder } : {}) };
      if (!Buffer.isBuffer(message)) await sink.deliver(message, info, deps.signal);
      else if (sink.deliverBuffer !== undefined) await sink.deliverBuffer(message, info, deps.signal);
      else await sink.deliver(Readable.from([message], { objectMode: false }), info, deps.signal);
      // A sink that cannot be asked after a crash (MDA, LMTP) would get every unrecorded message of the
      // group again: record this one now, durably, before the next one reaches it.
      const recorded = sink.findDelivered === undefined;
      if (recorded) {
        await sink.flush?.();
        await ledger.record([{ uidl: c.uidl }], deps.now());
        await ledger.sync();
      }
      report.bytes += c.size;
      group.push({ uidl: c.uidl, number: c.number, discarded: false, recorded });
      deps.progress?.messageDone?.(acct.name, c.size);
    };

    // Intents run ahead of commits: one synced write covers many messages even with batch = 1, and the
    // next window's is written while this window's messages arrive, so the wait for it is rarely felt.
    const intentSpan = Math.max(acct.batch, INTENTS_AHEAD);
    let intentUpto = 0;
    let intentNext: { from: number; upto: number; done: Promise<void> } | undefined;
    const writeIntents = (from: number): { from: number; upto: number; done: Promise<void> } => {
      const next = fetchList.slice(from, from + intentSpan);
      const done = ledger.intend(next.map((x) => ({ uidl: x.uidl, target: x.dest !== undefined ? destinationKey(x.dest) : '*' })));
      done.catch(() => undefined); // awaited before any of these messages reaches a sink
      return { from, upto: from + next.length, done };
    };
    let index = 0;
    let deliverError: unknown;
    try {
      await client.retrEach(
        fetchList.map((c) => c.number),
        async (_n, stream) => {
          if (asyncError !== undefined) throw asyncError;
          if (deps.stop?.aborted) throw new StopRequested();
          const i = index++;
          const c = fetchList[i]!;
          if (i >= intentUpto) {
            if (intentNext?.from !== i) intentNext = writeIntents(i);
            await intentNext.done;
            intentUpto = intentNext.upto;
            intentNext = undefined;
          }
          if (intentNext === undefined && intentUpto < fetchList.length && i >= intentUpto - intentSpan / 2) intentNext = writeIntents(intentUpto);
          let message: Readable = stream;
          let dest = c.dest ?? DEFAULT_DESTINATION;
          if (peek) {
            const p = await peekHeader(stream);
            dest = chooseDestination(rules, c.size, parseHeaders(p.head));
            message = p.message;
          }
          if (dest.kind === 'discard') {
            message.destroy();
            group.push({ uidl: c.uidl, number: c.number, discarded: true });
            deps.progress?.messageDone?.(acct.name, c.size);
          } else if (acct.parallel > 1 && c.size <= PARALLEL_MAX_OCTETS && isMaildir(dest.kind === 'sink' ? dest.spec : acct.sink)) {
            const body = await bufferUpTo(message, PARALLEL_BUFFER_CAP);
            if (Buffer.isBuffer(body)) {
              while (inflight.size >= acct.parallel) await Promise.race(inflight);
              const task = deliverTo(c, dest, body).catch((e: unknown) => {
                asyncError ??= e;
              });
              inflight.add(task);
              void task.then(() => inflight.delete(task));
            } else {
              await deliverTo(c, dest, body); // the server's size was wrong: stream it after all
            }
          } else {
            await deliverTo(c, dest, message);
          }
          if (group.length + inflight.size >= acct.batch || performance.now() - groupStart >= acct.batch_ms) {
            await commit(false);
            groupStart = performance.now();
          }
        },
        { deadlineMs, maxOctetsOf: allowed },
      );
    } catch (e) {
      if (e instanceof StopRequested) report.stopped = true;
      else deliverError = e;
    }
    await drain();
    await intentNext?.done.catch(() => undefined); // an intent write still under way finishes before the commit and the ledger's close
    deliverError ??= asyncError;
    // Whatever completed is committed, even after an error: it is delivered.
    try {
      await commit(true);
    } catch (e) {
      deliverError ??= e;
    }
    if (deliverError !== undefined) throw deliverError;

    const marked = (await Promise.all(deles)).filter(Boolean).length;
    await client.quit();
    report.deleted = marked;
    report.ok = true;
    return report;
  } finally {
    client?.close();
    report.elapsedMs = Math.round(performance.now() - started);
    const closing = await Promise.allSettled([...sinks.values()].map(async (s) => (await s).close()));
    await ledger.close();
    const failed = closing.find((r): r is PromiseRejectedResult => r.status === 'rejected' && !String(r.reason).includes('closed'));
    if (failed !== undefined && report.ok) log('warn', `${acct.name}: closing a sink failed: ${String(failed.reason)}`);
  }
}

type SinkFor = (dest: Destination) => Promise<Sink>;

/**
 * Ask the sinks which pending deliveries arrived. A message whose
 * destination was decided while reading it (target `*`) may be in any sink
 * of the account: the sinks are asked in turn, each about what the earlier
 * ones did not find, so identical copies still count once each. A sink
 * without a probe finds nothing: its pending messages are delivered again.
 */
async function findDelivered(pending: readonly (PendingDelivery & { content: MessageSource })[], acct: ResolvedAccount, sinkFor: SinkFor): Promise<Set<string>> {
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

/** Where a pending delivery may have gone: a sink (as a destination) and, in the account's own sink, which Maildir folders. */
function placesFor(target: string, acct: ResolvedAccount): { dest: Destination; folders: (string | undefined)[] }[] {
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

/**
 * The listings a safe fetch can use. A message is left on the server, with
 * a warning, when its UIDL is not one RFC 1939 allows (it could not be told
 * apart from another, or recorded), when two messages share a UIDL or a
 * number appears twice (delivering either could repeat the other), or when
 * LIST gives no size for it (its size bounds the download).
 */
function usableListings(listed: readonly UidlEntry[], sizes: ReadonlyMap<number, number>, skip: (number: number, why: string) => void): UidlEntry[] {
  const uids = new Map<string, number>();
  const numbers = new Map<number, number>();
  for (const u of listed) {
    uids.set(u.uid, (uids.get(u.uid) ?? 0) + 1);
    numbers.set(u.number, (numbers.get(u.number) ?? 0) + 1);
  }
  return listed.filter((u) => {
    const why = !isValidUid(u.uid)
      ? `its UIDL ${JSON.stringify(printable(u.uid))} is not valid (RFC 1939: 1 to 70 characters from 0x21 to 0x7E)`
      : uids.get(u.uid)! > 1
        ? `its UIDL ${JSON.stringify(u.uid)} is listed for more than one message`
        : numbers.get(u.number)! > 1
          ? 'UIDL lists its number more than once'
          : !sizes.has(u.number)
            ? 'LIST gives no size for it'
            : undefined;
    if (why !== undefined) skip(u.number, why);
    return why === undefined;
  });
}

/** A listing cut off by its bound says which settings raise it. */
function listingLimit(e: unknown): unknown {
  return e instanceof Pop3LimitError ? new Pop3LimitError(`${e.message} (the account's max_list_lines and max_list_octets)`, { cause: e }) : e;
}

function isMaildir(spec: SinkSpecValue): boolean {
  return spec['type'] === 'maildir';
}

/** The whole message when it fits in `cap` octets; otherwise a stream of all of it (what was read, then the rest). */
async function bufferUpTo(stream: Readable, cap: number): Promise<Buffer | Readable> {
  const chunks: Buffer[] = [];
  let total = 0;
  const it = stream[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
  for (;;) {
    const r = await it.next();
    if (r.done === true) return chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, total);
    chunks.push(r.value);
    total += r.value.length;
    if (total > cap) {
      async function* all(): AsyncGenerator<Buffer> {
        yield* chunks;
        for (;;) {
          const n = await it.next();
          if (n.done === true) return;
          yield n.value;
        }
      }
      return Readable.from(all(), { objectMode: false });
    }
  }
}

/** Read up to the end of the header (bounded), and give back a stream of the whole message. */
async function peekHeader(stream: Readable): Promise<{ head: Buffer; message: Readable }> {
  const chunks: Buffer[] = [];
  let total = 0;
  const it = stream[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
  for (;;) {
    const r = await it.next();
    if (r.done === true) break;
    chunks.push(r.value);
    total += r.value.length;
    const so = Buffer.concat(chunks);
    if (/\r?\n\r?\n/.test(so.toString('latin1')) || total >= HEADER_PEEK_LIMIT) {
      chunks.length = 0;
      chunks.push(so);
      const head = so;
      async function* rest(): AsyncGenerator<Buffer> {
        yield head;
        for (;;) {
          const n = await it.next();
          if (n.done === true) return;
          yield n.value;
        }
      }
      return { head, message: Readable.from(rest(), { objectMode: false }) };
    }
  }
  const all = Buffer.concat(chunks);
  return { head: all, message: Readable.from([all], { objectMode: false }) };
}
