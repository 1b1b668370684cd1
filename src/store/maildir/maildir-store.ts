/**
 * Maildir store: the composition of its parts. open() takes the session
 * lock (locks.ts) and scans the maildrop, from a remembered scan while
 * nothing changed (scan-cache.ts) or by listing it (listing.ts) and matching
 * the listing with dovecot-uidlist (uidlist-sync.ts, sizes from sizes.ts);
 * a big maildrop's scan is also saved in it for other processes (scan-file.ts);
 * the open maildrop (maildrop.ts) reads, and commits at UPDATE. deliver()
 * writes with the Maildir writer (writer.ts), after a quota check from the
 * file names (usage.ts); deliverShared() links one written file into several
 * maildrops.
 */
import { lstatSync, promises as fs, realpathSync } from 'node:fs';
import path from 'node:path';
import type { Readable } from 'node:stream';
import type { Principal } from '../../auth/types.js';
import { InUseError, MailError, PermanentFailure, TemporaryFailure } from '../../errors.js';
import type { Logger } from '../../observability/log.js';
import { fsyncDir } from '../../platform/fsync.js';
import type { DeliverOptions, DeliveryTarget, MailStore, Maildrop } from '../types.js';
import type { Entry } from './entry.js';
import { ensureMaildir, isDirectory, messageNames, moveNewToCur, pinDirectories, UnsafeMaildrop } from './listing.js';
import { processLocks, SessionLock } from './locks.js';
import { MaildirMaildrop, type MaildropOwner } from './maildrop.js';
import { baseName, uniqueName } from './names.js';
import { scanWithCache, statScanKey, type ScanKey } from './scan-cache.js';
import { syncUidlist } from './uidlist-sync.js';
import { checkQuota, inQuotaTurn, maildropUsage, quotaLimits } from './usage.js';
import { NO_LINK, newName, publish, writeTmp } from './writer.js';

export { dovecotUidl } from './entry.js';
export { forgetLastRememberedMessage, forgetRememberedScans, onSavedScan, preloadSavedScan } from './scan-cache.js';
export { fileCrlfSize, fileCrlfSizes } from './sizes.js';

export interface MaildirStoreOptions {
  /** Maildrop of user U is ROOT/U unless the user database names one. */
  root: string;
  logger: Logger;
  /** fsync files and directories where durability needs it (default true). */
  fsync?: boolean;
  uidlistStaleSeconds?: number;
  /** Clock for EXPIRE (tests); default Date.now. */
  now?: () => number;
  /** Save scans of big maildrops in the maildrop for other processes (default true). */
  scanFiles?: boolean;
  /**
   * Open a maildrop directory that is a symbolic link leading out of the
   * Maildir root, or (for a path from the user database) one reached through a
   * symbolic link anywhere on its path (default false: the login is refused).
   */
  allowSymlinkedMaildrops?: boolean;
}

const SESSION_LOCK = 'poplar-pop3.lock';

export class MaildirStore implements MailStore, MaildropOwner {
  readonly #root: string;
  readonly #log: Logger;
  readonly #fsync: boolean;
  readonly #stale: number;
  readonly #now: () => number;
  readonly #scanFiles: boolean;
  readonly #allowSymlinks: boolean;

  constructor(opts: MaildirStoreOptions) {
    this.#scanFiles = opts.scanFiles ?? true;
    this.#root = opts.root;
    this.#log = opts.logger;
    this.#fsync = opts.fsync ?? true;
    this.#stale = opts.uidlistStaleSeconds ?? 120;
    this.#now = opts.now ?? Date.now;
    this.#allowSymlinks = opts.allowSymlinkedMaildrops ?? false;
  }

  maildropPath(username: string, maildir?: string): string {
    if (maildir !== undefined) return maildir;
    if (username === '' || username === '.' || username === '..' || /[/\0]/.test(username)) {
      throw new PermanentFailure('Invalid user name for a maildrop');
    }
    return path.join(this.#root, username);
  }

  async open(user: Principal, signal?: AbortSignal): Promise<Maildrop> {
    const dir = this.maildropPath(user.username, user.maildir);
    if (!processLocks.claim(dir)) throw new InUseError('Maildrop is locked by another session');
    let lock: SessionLock | null = null;
    try {
      // Before anything is created or opened in it.
      this.#checkMaildrop(dir);
      const lockFile = path.join(dir, SESSION_LOCK);
      try {
        lock = SessionLock.tryAcquire(lockFile);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
        await this.#ensureMaildir(dir); // a new user: no maildrop yet
        lock = SessionLock.tryAcquire(lockFile);
      }
      if (lock === null) throw new InUseError('Maildrop is locked by another session');
      // Under the lock, cur/ and new/ are stat'ed for the scan; only when they are missing (or not
      // directories) is there anything to create (or to refuse).
      const key = statScanKey(dir);
      if (key === null) await this.#ensureMaildir(dir);
      signal?.throwIfAborted();
      const entries = await this.#scan(dir, signal, key);
      return new MaildirMaildrop(this, dir, entries, lock);
    } catch (e) {
      lock?.release();
      processLocks.drop(dir);
      throw e;
    }
  }

  /**
   * Refuse a maildrop directory that leads somewhere it should not: ROOT/U
   * that is a symbolic link out of the root, or any symbolic link on the
   * path of a maildrop given by the user database outside the root (where
   * the owner of a parent directory could point it at /etc). One lstat for
   * ROOT/U that is a plain directory, the usual case.
   */
  #checkMaildrop(dir: string): void {
    if (this.#allowSymlinks) return;
    const lexical = path.resolve(dir);
    const root = path.resolve(this.#root);
    const underRoot = lexical.startsWith(root + path.sep);
    if (underRoot && path.dirname(lexical) === root) {
      const st = lstatSync(lexical, { throwIfNoEntry: false });
      if (st === undefined || !st.isSymbolicLink()) return; // created under the root, or a real directory
    }
    // Where it really is: the nearest existing part of the path, resolved, and the rest as it stands.
    let existing = lexical;
    let rest = '';
    let real: string | undefined;
    while (real === undefined) {
      try {
        real = realpathSync.native(existing);
      } catch (e) {
        const parent = path.dirname(existing);
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT' || parent === existing) throw e;
        rest = path.join(path.basename(existing), rest);
        existing = parent;
      }
    }
    const resolved = path.join(real, rest);
    let inside: boolean;
    if (underRoot) {
      let realRoot = root;
      try {
        realRoot = realpathSync.native(root);
      } catch {
        // no root yet: compared as configured
      }
      inside = resolved.startsWith(realRoot + path.sep);
    } else {
      inside = resolved === lexical;
    }
    if (inside) return;
    this.#log.error(
      { dir, resolved },
      underRoot
        ? 'maildrop refused: it is a symbolic link leading out of the Maildir root (set [store] allow_symlinked_maildrops = true to allow it)'
        : 'maildrop refused: its path goes through a symbolic link (set [store] allow_symlinked_maildrops = true to allow it)',
    );
    throw new TemporaryFailure('Cannot open the maildrop, try again later.');
  }

  /** cur/, new/ and tmp/ (created when missing), which must be directories, not links. */
  async #ensureMaildir(dir: string): Promise<void> {
    try {
      await ensureMaildir(dir);
    } catch (e) {
      if (!(e instanceof UnsafeMaildrop)) throw e;
      this.#log.error({ dir }, `maildrop refused: ${e.message}`);
      throw new TemporaryFailure('Cannot open the maildrop, try again later.');
    }
  }

  /** @internal */
  unlock(dir: string, lock: SessionLock): void {
    try {
      lock.release();
    } finally {
      processLocks.drop(dir);
    }
  }

  now(): number {
    return this.#now();
  }

  get fsyncEnabled(): boolean {
    return this.#fsync;
  }

  /**
   * The maildrop's messages: a remembered scan while the maildrop did not
   * change (scan-cache.ts), else a full scan. `key`: taken at login, or null
   * when cur/ or new/ had to be created first (then taken now).
   */
  #scan(dir: string, signal: AbortSignal | undefined, key: ScanKey | null): Promise<Entry[]> {
    return scanWithCache(dir, key ?? statScanKey(dir), { log: this.#log, scanFiles: this.#scanFiles, fullScan: () => this.#fullScan(dir, signal) });
  }

  /** List the maildrop and match it with the uidlist; `wrote`: the key of the uidlist it wrote, if it did. */
  async #fullScan(dir: string, signal?: AbortSignal): Promise<{ entries: Entry[]; wrote?: string }> {
    // new/ and cur/ are listed and renamed in through their open directories: one swapped for a
    // link after the login's lstat cannot send a message file anywhere else.
    const pinned = await pinDirectories(dir);
    try {
      await moveNewToCur(pinned.new, pinned.cur, await messageNames(dir, 'new', this.#log, pinned.new));
    } catch (e) {
      await pinned.close();
      throw e;
    }
    const files = await messageNames(dir, 'cur', this.#log, pinned.cur).finally(() => pinned.close());
    const byBase = new Map<string, string>();
    for (const f of files) byBase.set(baseName(f), f);

    return syncUidlist(dir, byBase, { log: this.#log, staleSeconds: this.#stale, fsync: this.#fsync, signal });
  }

  async deliver(user: string | Principal, message: Readable | Buffer, signal?: AbortSignal, options?: DeliverOptions): Promise<void> {
    const dir = await this.#deliveryDir(user);
    const quota = options?.quota;
    const source = Buffer.isBuffer(message) ? [message] : (message as AsyncIterable<Buffer>);
    const written = await writeTmp(dir, source, { mode: 0o600, fsync: this.#fsync, signal });
    if (!quotaLimits(quota)) await publish(written, signal);
    else {
      await inQuotaTurn(dir, async () => {
        try {
          checkQuota(await maildropUsage(dir), written.crlfSize, quota);
        } catch (e) {
          await fs.unlink(written.tmp).catch(() => undefined);
          throw e;
        }
        await publish(written, signal);
      });
    }
    if (this.#fsync) await fsyncDir(path.join(dir, 'new'));
  }

  /**
   * The message is written (and fsynced) once, into tmp/ of the first
   * maildrop, and hard-linked into new/ of each (a copy where the maildrops
   * are on different file systems). Each target's quota is checked on its
   * own; a failure for one leaves the others delivered.
   */
  async deliverShared(targets: readonly DeliveryTarget[], message: Buffer, signal?: AbortSignal): Promise<(Error | undefined)[]> {
    const out: (Error | undefined)[] = targets.map(() => undefined);
    const dirs: (string | undefined)[] = [];
    for (const [i, t] of targets.entries()) {
      try {
        dirs.push(await this.#deliveryDir(t.user));
      } catch (e) {
        dirs.push(undefined);
        out[i] = e as Error;
      }
    }
    const first = dirs.find((d) => d !== undefined);
    if (first === undefined) return out;
    const shared = await writeTmp(first, [message], { mode: 0o600, fsync: this.#fsync, signal });
    try {
      // One after another: two targets may be one maildrop, whose quota counts the first.
      const linked = new Map<string, number[]>();
      for (const [i, t] of targets.entries()) {
        const dir = dirs[i];
        if (dir === undefined) continue;
        try {
          const link = async (): Promise<void> => {
            if (quotaLimits(t.quota)) checkQuota(await maildropUsage(dir), shared.crlfSize, t.quota);
            signal?.throwIfAborted();
            const name = newName({ ...shared, dir, base: uniqueName() });
            await fs.link(shared.tmp, path.join(dir, 'new', name)).catch(async (e: NodeJS.ErrnoException) => {
              if (e.code !== 'EXDEV' && !NO_LINK.has(e.code ?? '')) throw e;
              // Another file system (or none with links): a copy of its own.
              await publish(await writeTmp(dir, [message], { mode: 0o600, fsync: this.#fsync, signal }), signal);
            });
          };
          await (quotaLimits(t.quota) ? inQuotaTurn(dir, link) : link());
          linked.set(dir, [...(linked.get(dir) ?? []), i]);
        } catch (e) {
          out[i] = this.#deliveryFailure(e, dir);
        }
      }
      // Then each new/ once: every message is durable before any reply.
      if (this.#fsync) {
        await Promise.all(
          [...linked].map(([dir, which]) =>
            fsyncDir(path.join(dir, 'new')).catch((e: unknown) => {
              for (const i of which) out[i] = this.#deliveryFailure(e, dir);
            }),
          ),
        );
      }
    } finally {
      await fs.unlink(shared.tmp).catch(() => undefined);
    }
    return out;
  }

  #deliveryFailure(e: unknown, dir: string): Error {
    if (e instanceof MailError) return e;
    this.#log.error({ err: e, dir }, 'maildir delivery failed');
    return new TemporaryFailure('Cannot deliver into the maildrop now', { cause: e });
  }

  /** The maildrop a delivery writes into: checked like a login's, tmp/ and new/ created when missing. */
  async #deliveryDir(user: string | Principal): Promise<string> {
    const dir = typeof user === 'string' ? this.maildropPath(user) : this.maildropPath(user.username, user.maildir);
    this.#checkMaildrop(dir);
    if (!isDirectory(path.join(dir, 'tmp')) || !isDirectory(path.join(dir, 'new'))) await this.#ensureMaildir(dir);
    return dir;
  }
}
