/**
 * One fetch of one account, as a sequence of steps (docs/fetch.md, "What a
 * fetch does"); each step lives in its own module and can be run alone:
 *
 *   1. connectAndLogin   (connect.ts)   secrets, TLS, login
 *   2. listMessages      (listing.ts)   UIDL and LIST, bounded; unusable listings left on the server
 *   3. settlePending     (pending.ts)   deliveries a crash left undecided: asked of their sinks
 *   4. planFetch         (plan.ts)      what to delete, leave or fetch (ledger, sizes, keep/delete)
 *   5. chooseDestinations (plan.ts)     where each message goes (rules, TOP n 0)
 *   6. DeliveryRun       (deliver.ts)   intent → RETR → deliver → flush → record, group-committed
 *   7. Deletions.quit    (deletions.ts) DELE answers, QUIT
 *
 * The durability order per message (deliver.ts) is the feature: every
 * message is durable in its sink before its UIDL is recorded, and recorded
 * before any DELE.
 */
import { AccountSinks } from './account-sinks.js';
import type { ResolvedAccount, SinkSpecValue } from './config.js';
import { connectAndLogin } from './connect.js';
import type { TokenSource } from './credentials.js';
import { Deletions } from './deletions.js';
import { DeliveryRun } from './deliver.js';
import { Ledger } from './ledger.js';
import { allowance, listMessages } from './listing.js';
import { settlePending } from './pending.js';
import { chooseDestinations, planFetch } from './plan.js';
import { newReport, type AccountReport, type ProgressListener } from './report.js';
import { compileRules } from './rules.js';
import type { Sink } from './sinks/types.js';
import type { Pop3Client } from '../client/index.js';

export { FetchProtocolError } from './listing.js';
export { newReport, type AccountReport, type ProgressListener } from './report.js';

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

/**
 * Fetch one account once. Resolves with the report on success; on failure
 * rejects with the error, after committing every delivery that completed
 * (and `report` holds the counts so far).
 */
export async function fetchAccount(acct: ResolvedAccount, deps: SessionDeps, report: AccountReport = newReport(acct.name)): Promise<AccountReport> {
  const started = performance.now();
  const log = deps.log ?? (() => undefined);
  const warn = (msg: string): void => log('warn', msg);
  const rules = compileRules(acct.rule);
  const deadlineMs = acct.message_timeout * 1000;

  const ledger = await Ledger.open(acct.state, { fsync: deps.fsync ?? true });
  const sinks = new AccountSinks(acct, deps.createSink);
  let client: Pop3Client | undefined;
  try {
    // 1. connect and log in
    client = await connectAndLogin(acct, deps);

    // 2. list
    const listing = await listMessages(client, acct, (number, why) => {
      report.skipped++;
      warn(`${acct.name}: message ${number} left on the server: ${why}`);
    });
    report.onServer = listing.listed.length;
    const maxOctetsOf = allowance(acct, listing.sizes);
    // Entries whose message is gone are forgotten (keeping them until now is what makes a lost QUIT harmless).
    // A UIDL left out of the usable listings for a fault of this session's listing is still on the server.
    await ledger.retainOnly(listing.onServer);

    // 3. settle what an interrupted run left pending
    const settled = await settlePending({
      client,
      ledger,
      acct,
      byUidl: new Map(listing.usable.map((u) => [u.uid, u.number])),
      maxOctetsOf,
      sinkFor: sinks.sinkFor,
      now: deps.now,
      signal: deps.signal,
    });
    if (settled.pending > 0) {
      report.recovered = settled.found;
      log('info', `${acct.name}: ${settled.pending} deliveries were interrupted; ${settled.found} had arrived, ${settled.pending - settled.found} will be fetched again`);
    }

    // 4. plan, 5. destinations
    const plan = planFetch(listing.usable, listing.sizes, (uidl) => ledger.get(uidl), acct, deps.now());
    report.skipped += plan.skipped;
    report.candidates = plan.candidates.length;
    const peek = await chooseDestinations(client, plan.candidates, rules, acct, maxOctetsOf, warn);

    const deletions = new Deletions(client);
    for (const n of plan.toDelete) deletions.dele(n);

    // 6. fetch and deliver, group-committed
    const fetchList = plan.candidates.filter((c) => c.dest?.kind !== 'discard');
    deps.progress?.accountStarted?.(acct.name, fetchList.length, fetchList.reduce((t, c) => t + c.size, 0));
    const run = new DeliveryRun(
      {
        acct,
        ledger,
        sinkFor: sinks.sinkFor,
        rules,
        peek,
        report,
        now: deps.now,
        dele: !acct.keep || acct.delete_after_days === 0 ? deletions.dele : undefined,
        signal: deps.signal,
        stop: deps.stop,
        progress: deps.progress,
      },
      fetchList,
      plan.candidates.filter((c) => c.dest?.kind === 'discard'),
    );
    await run.fetchAll(client, deadlineMs, maxOctetsOf);

    // 7. DELE answers, QUIT
    report.deleted = await deletions.quit();
    report.ok = true;
    return report;
  } finally {
    client?.close();
    report.elapsedMs = Math.round(performance.now() - started);
    const failed = await sinks.closeAll();
    await ledger.close();
    if (failed !== undefined && report.ok) warn(`${acct.name}: closing a sink failed: ${String(failed.reason)}`);
  }
}
