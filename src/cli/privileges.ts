import { spawnSync } from 'node:child_process';
import { promises as fs, readFileSync } from 'node:fs';
import path from 'node:path';
import { ConfigError } from '../config/errors.js';

/** The account `poplar serve` runs as once its listeners are bound (`[server] user`/`group`). */
export interface ServiceIdentity {
  readonly user: string;
  readonly uid: number;
  readonly group: string;
  readonly gid: number;
}

interface AccountEntry {
  name: string;
  id: number;
  /** passwd only: the primary group. */
  gid?: number;
}

/** One passwd or group entry by name or number, through NSS (getent), or /etc/* when getent is missing. */
function lookup(db: 'passwd' | 'group', key: string): AccountEntry | null {
  const parse = (line: string): AccountEntry | null => {
    const f = line.split(':');
    const id = Number(f[2]);
    if (f.length < 3 || f[0] === undefined || f[2] === '' || !Number.isInteger(id)) return null;
    return { name: f[0], id, ...(db === 'passwd' ? { gid: Number(f[3]) } : {}) };
  };
  const r = spawnSync('getent', [db, '--', key], { encoding: 'utf8', timeout: 10_000 });
  if (r.error === undefined) return r.status === 0 ? parse(r.stdout.split('\n')[0] ?? '') : null;
  let text = '';
  try {
    text = readFileSync(`/etc/${db}`, 'utf8');
  } catch {
    return null;
  }
  const entries = text.split('\n').map(parse).filter((e): e is AccountEntry => e !== null);
  return entries.find((e) => e.name === key) ?? (/^\d+$/.test(key) ? (entries.find((e) => e.id === Number(key)) ?? null) : null);
}

const uidNow = (): number => process.geteuid?.() ?? -1;

/**
 * Who `poplar serve` will run as: the `[server] user`/`group` looked up, or
 * null to stay as it is. Refuses (ConfigError, exit 78) to run as root without
 * `user` unless `allow_root`, an account that does not exist, and a switch
 * only root could make.
 */
export function resolveServiceIdentity(server: { user?: string | undefined; group?: string | undefined; allow_root: boolean }): ServiceIdentity | null {
  const euid = uidNow();
  if (server.user === undefined) {
    if (server.group !== undefined) throw new ConfigError('invalid configuration: server.group is set but server.user is not');
    if (euid === 0 && !server.allow_root) {
      throw new ConfigError('refusing to run as root: set server.user (--user), e.g. --user nobody, or allow it with server.allow_root = true (--allow-root)');
    }
    return null;
  }
  const pw = lookup('passwd', server.user);
  if (pw === null || pw.gid === undefined || !Number.isInteger(pw.gid)) throw new ConfigError(`server.user: no such user: ${server.user}`);
  let group: AccountEntry | null;
  if (server.group !== undefined) {
    group = lookup('group', server.group);
    if (group === null) throw new ConfigError(`server.group: no such group: ${server.group}`);
  } else {
    group = lookup('group', String(pw.gid)) ?? { name: String(pw.gid), id: pw.gid };
  }
  if (pw.id === 0 && !server.allow_root) throw new ConfigError(`server.user ${server.user} is root: name an unprivileged account, or allow root with server.allow_root = true (--allow-root)`);
  const id: ServiceIdentity = { user: pw.name, uid: pw.id, group: group.name, gid: group.id };
  if (euid !== 0 && (euid !== id.uid || process.getegid?.() !== id.gid)) {
    throw new ConfigError(`cannot switch to user ${id.user} (group ${id.group}): only root can, and poplar runs as uid ${euid} gid ${process.getegid?.()}`);
  }
  return id;
}

/** Real, effective, saved and file-system ids from /proc (Linux), or null elsewhere. */
function procIds(field: 'Uid' | 'Gid'): number[] | null {
  try {
    const line = readFileSync('/proc/self/status', 'utf8').split('\n').find((l) => l.startsWith(`${field}:`));
    return line === undefined ? null : line.slice(field.length + 1).trim().split(/\s+/).map(Number);
  } catch {
    return null;
  }
}

/**
 * Switch this process to `id` for good: the group list becomes the one group,
 * then the group, then the user (real, effective and saved ids, which is what
 * setuid(2) does as root). Checks afterwards that every id is the new one and
 * that root cannot be taken back; throws otherwise. Does nothing when the
 * process already is `id` (not root).
 */
export function dropPrivileges(id: ServiceIdentity): void {
  if (uidNow() !== 0) return; // resolveServiceIdentity checked that we already are `id`
  process.setgroups!([id.gid]);
  process.setgid!(id.gid);
  process.setuid!(id.uid);
  if (id.uid === 0) return; // allow_root with user = root: nothing to verify
  const uids = procIds('Uid') ?? [process.getuid!(), process.geteuid!()];
  const gids = procIds('Gid') ?? [process.getgid!(), process.getegid!()];
  const groups = process.getgroups!();
  let regained = false;
  try {
    process.setuid!(0);
    regained = true;
  } catch {
    // expected: EPERM
  }
  if (regained || uids.some((u) => u !== id.uid) || gids.some((g) => g !== id.gid) || groups.some((g) => g !== id.gid)) {
    throw new Error(`switching to user ${id.user} failed: uids ${uids.join(' ')}, gids ${gids.join(' ')}, groups ${groups.join(' ')}${regained ? ', root regained' : ''}`);
  }
}

/**
 * What Poplar creates for itself on a first run as root, handed to the service
 * user once everything exists: deepest first, so every directory a path goes
 * through is still root's (0700) while it is changed, and no other process can
 * swap a symbolic link in. Symbolic links are never followed nor changed.
 * Without a service user, or when not root, it only creates.
 */
export class Handover {
  readonly #id: ServiceIdentity | null;
  readonly #paths: string[] = [];

  constructor(id: ServiceIdentity | null) {
    this.#id = uidNow() === 0 ? id : null;
  }

  /** `mkdir -p` with `mode`; the directories it creates are handed over. */
  async mkdir(dir: string, mode: number): Promise<void> {
    const first = await fs.mkdir(dir, { recursive: true, mode });
    if (first === undefined) return;
    const chain: string[] = [];
    for (let d = dir; ; d = path.dirname(d)) {
      chain.unshift(d);
      if (d === first || d === path.dirname(d)) break;
    }
    this.#paths.push(...chain);
  }

  /** Files just created. */
  add(...files: string[]): void {
    this.#paths.push(...files);
  }

  /** A directory tree just created: the directory, its directories and regular files. */
  async tree(dir: string): Promise<void> {
    const st = await fs.lstat(dir);
    if (!st.isDirectory() && !st.isFile()) return;
    this.#paths.push(dir);
    if (!st.isDirectory()) return;
    for (const e of await fs.readdir(dir, { withFileTypes: true })) {
      if (e.isDirectory() || e.isFile()) await this.tree(path.join(dir, e.name));
    }
  }

  async commit(): Promise<void> {
    const id = this.#id;
    if (id === null) return;
    for (const p of [...this.#paths].reverse()) await fs.lchown(p, id.uid, id.gid);
    this.#paths.length = 0;
  }
}

/** Whether this process (after the switch) can use `p` as asked; the error code when not. */
export async function usable(p: string, mode: number): Promise<string | null> {
  try {
    await fs.access(p, mode);
    return null;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code ?? 'error';
  }
}
