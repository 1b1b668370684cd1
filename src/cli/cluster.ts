import cluster, { type Worker } from 'node:cluster';
import { once } from 'node:events';
import { createLogger } from '../observability/log.js';
import { loadConfig, type ServeFlags } from '../config/load.js';
import { dropPrivileges, resolveServiceIdentity } from './privileges.js';
import { PrimaryLimits } from '../auth/throttle-cluster.js';
import { ScanRelay, shareScans } from './scan-sharing.js';
import { parseScanFile } from '../store/maildir/scan-file.js';
import { Channel, ChannelReplies } from '../server/channel.js';
import type { Connection } from '../server/connection.js';
import { TRANSACTION_COMMANDS, TransactionState, type MailPort } from '../server/transaction.js';
import type { Maildrop } from '../store/types.js';
import type { Principal } from '../auth/types.js';
import { adminEnabled } from '../admin/process-admin.js';
import { bindAdmin } from '../admin/bind.js';
import { ClusterAdmin } from '../admin/cluster-admin.js';

/**
 * `poplar serve --workers N`: N worker processes share the listening sockets
 * (node:cluster). The first worker starts alone, so first-run work (the
 * certificate, the demo user and its banner) happens exactly once; the others
 * follow. Signals go to every worker: SIGHUP reloads certificates, SIGTERM
 * and SIGINT stop gracefully. A worker that dies is replaced.
 *
 * The workers accept connections themselves, from the one listening socket
 * they share (SCHED_NONE): the kernel hands each connection to a waiting
 * worker. Node's default on Linux, round-robin, makes the primary accept
 * every connection and pass it to a worker over IPC, which costs more CPU per
 * session than the session itself and made two workers slower than one.
 * Each worker takes one connection per turn of its event loop
 * (UV_TCP_SINGLE_ACCEPT=1 unless set otherwise), so a burst of connections,
 * such as a few long RETR sessions opened together, is spread over the
 * workers instead of all going to whichever woke first.
 *
 * Privileges: the primary makes the listening sockets for the workers (with
 * either scheduling policy), so it stays root until every worker listens, then
 * switches to `[server] user` for good. Each worker switches before it asks
 * for its sockets, so it never serves as root. A worker started later, in
 * place of one that died, is forked by the switched primary and never was
 * root; it receives the sockets the primary already holds.
 *
 * Login failure counters, blocks and LOGIN-DELAY times are shared: without a
 * database the primary holds them and the workers ask it over the IPC
 * channel (src/auth/throttle-cluster.ts); with one, every worker uses the
 * database (src/cli/shared-limits.ts). Connection limits stay per worker (the
 * maildrop lock is a flock and covers them all).
 *
 * A big maildrop's scan saved by one worker is announced through the primary
 * to the others, which load it before their first login there
 * (src/cli/scan-sharing.ts).
 */
export async function runPrimary(flags: ServeFlags, workers: number): Promise<void> {
  const config = loadConfig(flags); // a bad configuration fails here, once, with exit 78
  const identity = resolveServiceIdentity(config.server); // so does root without `user`, or an unknown account
  // Node's own NODE_CLUSTER_SCHED_POLICY (rr | none) still decides when it is set.
  if (process.env['NODE_CLUSTER_SCHED_POLICY'] === undefined) cluster.schedulingPolicy = cluster.SCHED_NONE;
  const logger = createLogger({ level: config.log_level, format: config.log_format });
  let stopping = false;
  let started = false;
  /** Replacements that failed to start in a row: the delay before the next one doubles. */
  let failures = 0;
  const live = new Set<Worker>();
  const scans = new ScanRelay();
  let badLimitsLogged = 0;
  // The admin listener (docs/monitoring.md) is the primary's: one scrape, one `who`, over every worker.
  // Bound here, as root, so a bad [admin] section stops the start before any worker runs.
  const admin = adminEnabled(config)
    ? await bindAdmin(config, new ClusterAdmin(() => live, workers, (config.admin.probe_timeout + 2) * 1000), logger, identity?.gid)
    : null;
  const limits = new PrimaryLimits({
    onBadRequest: (why) => {
      // Only our own workers talk here; one line a minute at most if one ever misbehaves.
      if (Date.now() - badLimitsLogged < 60_000) return;
      badLimitsLogged = Date.now();
      logger.warn({ why }, 'refused a malformed login-counter request from a worker');
    },
  });

  const fork = async (index: number): Promise<void> => {
    if (stopping) return; // a signal came while the workers were starting: no new one
    const w = cluster.fork({ POPLAR_WORKER: String(index), UV_TCP_SINGLE_ACCEPT: process.env['UV_TCP_SINGLE_ACCEPT'] ?? '1' });
    live.add(w);
    limits.serve(w);
    scans.serve(w, () => live);
    w.on('exit', (code, signal) => {
      live.delete(w);
      if (stopping) {
        if (live.size === 0) {
          logger.flush();
          process.exit(0);
        }
        return;
      }
      if (!started) return; // the start-up below reports it
      const delay = Math.min(60_000, 1000 * 2 ** Math.min(failures, 6));
      logger.error({ worker: index, code, signal, retryInMs: delay }, 'worker died; starting a new one');
      setTimeout(() => {
        fork(index).then(
          () => (failures = 0),
          (e: unknown) => {
            failures++;
            // With no worker left, the primary holds no listening socket any more and, switched,
            // cannot bind a privileged port again: end, so that the service manager restarts Poplar.
            if (live.size === 0 && !stopping) {
              logger.error({ err: e }, 'no worker is running and a new one cannot start; exiting');
              logger.flush();
              process.exit(75);
            }
          },
        );
      }, delay).unref();
    });
    await new Promise<void>((resolve, reject) => {
      const onMessage = (m: unknown): void => {
        if ((m as { type?: string } | null)?.type === 'ready') resolve();
      };
      w.on('message', onMessage);
      w.once('exit', (code) => reject(new Error(`worker ${index} exited with code ${code} while starting`)));
    });
  };

  // Signals are handled from the first fork on: a SIGTERM while workers start (a service manager's stop)
  // must reach the workers already serving, not end the primary and cut their sessions.
  const stop = (signal: NodeJS.Signals): void => {
    if (stopping) return;
    stopping = true;
    if (admin !== null) admin.draining = true;
    logger.info({ signal }, 'shutting down workers');
    for (const w of live) w.process.kill('SIGTERM');
    if (live.size === 0) {
      logger.flush();
      process.exit(0);
    }
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGHUP', () => {
    for (const w of live) w.process.kill('SIGHUP');
  });

  try {
    await fork(1);
    await Promise.all(Array.from({ length: workers - 1 }, (_, i) => fork(i + 2)));
  } catch (e) {
    // Stopped by a signal while starting: the workers' exits end the primary (exit 0).
    if (stopping) return new Promise<void>(() => undefined);
    stopping = true;
    for (const w of live) w.process.kill('SIGTERM');
    logger.error({ err: e }, 'workers failed to start');
    logger.flush();
    // The worker printed the reason (e.g. a port in use); keep its exit code meaning: configuration.
    process.exit(78);
  }
  started = true;
  if (identity !== null) {
    try {
      dropPrivileges(identity);
    } catch (e) {
      stopping = true;
      for (const w of live) w.process.kill('SIGKILL');
      logger.fatal({ err: e }, 'could not switch to the service user');
      logger.flush();
      process.exit(71);
    }
    logger.info({ user: identity.user, uid: identity.uid, group: identity.group, gid: identity.gid }, 'switched to the service user');
  } else if (process.geteuid?.() === 0) logger.warn({ uid: 0 }, 'running as root (allow_root): set server.user to run as an unprivileged account');
  logger.info({ workers }, 'all workers ready');

  if (stopping) return new Promise<void>(() => undefined);
  await once(process, 'beforeExit');
}

export const isClusterWorker = (): boolean => cluster.isWorker;

/** Messages in the made-up maildrop of warmUpListings; WARM_ROUNDS passes over it. */
const WARM_MESSAGES = 20_000;
const WARM_ROUNDS = 3;

/**
 * Run the code of a big maildrop's first login once, on a made-up saved scan
 * and into no connection: reading a saved scan (scan-file.ts), then STAT,
 * LIST and UIDL. Without it, the first big LIST a worker answers runs in
 * V8's interpreter and takes twice as long as the next ones; the sibling of
 * the worker that served the first login would make a user wait for that.
 * A few hundred milliseconds of CPU, once, before the worker reports ready.
 * Resolves to the number of reply lines it made (and threw away).
 */
export async function warmUpListings(messages = WARM_MESSAGES, rounds = WARM_ROUNDS): Promise<number> {
  const lines = [`poplar-scan 2 ${messages} warm-up`];
  for (let i = 1; i <= messages; i++) lines.push(`${i} ${2000 + (i % 5000)} - ${(0x10000000 + i).toString(16)}${i} 1700000000.M${i}P4242.warm-up,S=${2000 + (i % 5000)}:2,S`);
  lines.push('');
  const text = lines.join('\n');
  let replyLines = 0;
  const sink = {
    write: (data: string) => {
      for (let i = data.indexOf('\n'); i >= 0; i = data.indexOf('\n', i + 1)) replyLines++;
      return true;
    },
    needsDrain: false,
    drain: async () => true,
    end: () => undefined,
    destroy: () => undefined,
  };
  const replies = new ChannelReplies(new Channel(sink as unknown as Connection, 10)) as unknown as MailPort;
  for (let r = 0; r < rounds; r++) {
    const entries = parseScanFile(text, 'warm-up');
    if (!Array.isArray(entries)) throw new Error('the warm-up scan does not parse');
    const state = new TransactionState({} as Principal, { messages: entries } as unknown as Maildrop);
    for (const command of ['STAT', 'LIST', 'UIDL']) await TRANSACTION_COMMANDS.get(command)!(replies, state, '');
  }
  return replyLines;
}

/** Tell the primary this worker listens (and from now on share maildrop scans with the siblings), once its listing code is warm. */
export function reportReady(): void {
  if (!cluster.isWorker) return;
  void warmUpListings()
    .catch(() => undefined) // only a head start: a failure costs the first big login some time, nothing else
    .finally(() => {
      shareScans();
      // With a callback, a primary already gone (killed, or stopping) is no 'error' that ends this worker mid-session.
      process.send?.({ type: 'ready' }, undefined, {}, () => undefined);
    });
}
