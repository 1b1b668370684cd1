/**
 * Fetcher benchmark: `npm run bench:fetch`. Needs root, Dovecot 2.3, mpop,
 * fetchmail and getmail6 (a missing client is reported, not fatal), and a
 * built `dist/` (`npm run build`).
 *
 * One private Dovecot (high-performance mode) serves one mailbox of 2000
 * messages of 8 KiB over loopback, plain POP3. Each client fetches the whole
 * mailbox in keep mode (nothing is deleted, so every run sees the same data)
 * into a fresh Maildir with fresh client state, RUNS times on each of two
 * file systems (a directory on the machine's own file system, and a fresh
 * loop-mounted ext4), in rounds that rotate the client order. The figures are
 * the median wall time of a client's process (start to exit, startup
 * included) and its median CPU time (user + system, children included).
 * Every run must leave exactly MESSAGES files in the Maildir. A failed run of
 * poplar or mpop fails the benchmark; a failed run of fetchmail or getmail6
 * is tried once more and, if it fails again, shown as failed in the table
 * (the report and the poplar/mpop verdict are still written).
 *
 * Writes docs/benchmarks-fetch.md and prints it. For quick comparisons while
 * working (no report written): `--runs N`, `--only poplar,mpop`,
 * `--fs ordinary|loop`.
 */
import { execFileSync } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, chmodSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { dovecotAvailable } from '../test/helpers/dovecot.js';
import { run, which, shebangInterpreter, type RunResult } from '../test/interop/run.js';
import { machineInfo, systemBusySeconds } from './procfs.js';
import { makeMaildir, MESSAGE_SIZE, MESSAGES, PASSWORD, USER, writeMailbox } from './fetch-mailbox.js';
import { startDovecotBench } from './servers.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const DOC = path.join(ROOT, 'docs', 'benchmarks-fetch.md');
const POPLAR_MAIN = path.join(ROOT, 'dist', 'cli', 'main.js');
/** The `poplar` command as installed (package.json "bin"): a launcher that runs POPLAR_MAIN. */
const POPLAR_BIN = path.join(ROOT, 'bin', 'poplar');
const DOVECOT_BIN = '/usr/sbin/dovecot';

/** `--runs N` and `--only poplar,mpop` are for quick comparisons while working; they do not write the report. */
function flag(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
}
const RUNS = Number(flag('--runs') ?? 3);
const ONLY = flag('--only')?.split(',');
/** `--dir DIR`: the "ordinary" file system's runs (and Dovecot's mailbox) go under DIR instead of a new directory in /var/tmp. */
const DIR = flag('--dir');
/** Size of the loop-mounted ext4 image. */
const SCRATCH_FS_BYTES = 2 * 1024 ** 3;
const RUN_TIMEOUT_MS = 120_000;
/** getmail6 needs ~0.1 s per message on a slow disk; a run is cut off here and reported as partial. */
const GETMAIL_TIMEOUT_MS = 110_000;
/** A client whose first run takes longer than this is run only once (keeps the whole run to a few minutes). */
const SLOW_RUN_MS = 15_000;
/** getmail's delivery-child race workaround (see runGetmail): the child waits this long before it starts. */
const GETMAIL_CHILD_DELAY_S = 0.002;

type ToolKey = 'poplar' | 'mpop' | 'fetchmail' | 'getmail6';
const TOOLS: ToolKey[] = ['poplar', 'mpop', 'fetchmail', 'getmail6'];
/**
 * Clients whose failure is reported in the table but does not fail the
 * benchmark (a failed run is tried once more): the verdict is Poplar against
 * mpop, and it is written whatever fetchmail or getmail6 do.
 */
const THIRD_PARTY: ToolKey[] = ['fetchmail', 'getmail6'];

interface Tool {
  key: ToolKey;
  /** Name and version, for the report. */
  version: string;
  durability: string;
  available: boolean;
  /** One fetch into `dir` (fresh, empty, mode 0755); returns the process result and the Maildir. */
  once(dir: string, port: number): Promise<{ r: RunResult; maildir: string; note?: string }>;
}

function log(s: string): void {
  process.stderr.write(`[bench:fetch] ${s}\n`);
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  if (s.length === 0) return NaN;
  if (s.length % 2 === 1) return s[mid]!;
  return (s[mid - 1]! + s[mid]!) / 2;
}

function cleanEnv(home: string, extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  return { PATH: process.env['PATH'] ?? '/usr/bin:/bin', HOME: home, LC_ALL: 'C', TZ: 'UTC', ...extra };
}


/** Files in new/ and cur/ (tmp/ must be empty). */
function countDelivered(md: string): { count: number; tmp: number } {
  const files = (d: string): string[] => {
    try {
      return readdirSync(path.join(md, d)).filter((n) => !n.startsWith('.'));
    } catch {
      return [];
    }
  };
  return { count: files('new').length + files('cur').length, tmp: files('tmp').length };
}



/** One raw POP3 session (USER/PASS/UIDL/LIST/QUIT) so Dovecot builds its index before anything is timed. */
function warmUp(port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host: '127.0.0.1', port });
    sock.setEncoding('latin1');
    let buf = '';
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error('warm-up timed out'));
    }, 60_000);
    sock.on('data', (d: string) => {
      buf += d;
      if (buf.endsWith('\r\n') && /\+OK Logging out/i.test(buf)) {
        clearTimeout(timer);
        sock.destroy();
        const uidl = buf.split('\r\n').filter((l) => /^\d+ \S+$/.test(l));
        resolve(uidl.length / 2);
      }
    });
    sock.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    sock.write(`USER ${USER}\r\nPASS ${PASSWORD}\r\nUIDL\r\nLIST\r\nQUIT\r\n`);
  });
}

function versionOf(file: string, args: string[]): string {
  try {
    const out = execFileSync(file, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    return (out.split('\n').find((l) => l.trim() !== '') ?? '').trim();
  } catch (e) {
    const err = e as { stdout?: string; stderr?: string };
    const text = `${err.stdout ?? ''}\n${err.stderr ?? ''}`;
    return (text.split('\n').find((l) => /\d+\.\d+/.test(l) && !/WARNING/.test(l)) ?? 'unknown').trim();
  }
}

// --------------------------------------------------------------------------- the tools

const poplar: Tool = {
  key: 'poplar',
  version: `poplar ${(JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { version: string }).version} (dist/, ${process.version})`,
  durability:
    'per-message durability: every message file is fsynced, and new/ after it, before the ledger records its UIDL (ledger fdatasync) and before any DELE; ' +
    'group commit (`batch` 64): the files of a group are fsynced together (16 thread-pool jobs of about 4 fsyncs each, so up to 16 waiting on the disk at once) while the next group downloads, ' +
    'then new/ once, then the group\'s UIDLs with one fdatasync; intents are synced before delivery',
  available: existsSync(POPLAR_MAIN),
  async once(dir, port) {
    const md = path.join(dir, 'Maildir');
    makeMaildir(md);
    const r = await run(
      POPLAR_BIN,
      [
        'fetch', '--once', '--json', '--no-progress',
        '--host', '127.0.0.1', '--port', String(port), '--tls', 'none',
        '--user', USER, '--password-env', 'BENCH_PW',
        '--keep', '--maildir', md, '--state', path.join(dir, 'ledger'),
      ],
      { env: cleanEnv(dir, { BENCH_PW: PASSWORD, PATH: `${path.dirname(process.execPath)}:${process.env['PATH'] ?? '/usr/bin:/bin'}` }), timeoutMs: RUN_TIMEOUT_MS },
    );
    let note: string | undefined;
    try {
      const j = JSON.parse(r.stdout.toString('utf8')) as { totals?: { delivered?: number } };
      if (j.totals?.delivered !== MESSAGES) note = `--json says delivered=${String(j.totals?.delivered)}`;
    } catch {
      note = 'no JSON summary';
    }
    return note === undefined ? { r, maildir: md } : { r, maildir: md, note };
  },
};

const mpop: Tool = {
  key: 'mpop',
  version: which('mpop') !== undefined ? versionOf('mpop', ['--version']) : 'not installed',
  durability:
    '`delivery maildir`: writes each message into tmp/, fsyncs it (one fsync per message, one message at a time: 2001 fsync calls for 2000 messages under `strace -c`) and links it into new/; the directory is not fsynced. `keep on`, UIDs in its `uidls_file`',
  available: which('mpop') !== undefined,
  async once(dir, port) {
    const md = path.join(dir, 'Maildir');
    makeMaildir(md);
    const conf = path.join(dir, 'mpoprc');
    writeFileSync(
      conf,
      [
        'account bench',
        'host 127.0.0.1',
        `port ${port}`,
        'tls off',
        'timeout 60',
        'auth user', // mpop skips cleartext methods without TLS unless asked for USER/PASS
        `user ${USER}`,
        `passwordeval "echo ${PASSWORD}"`,
        `delivery maildir ${md}`,
        `uidls_file ${path.join(dir, 'uidls')}`,
        'keep on',
        'only_new off',
        'received_header off',
        '',
      ].join('\n'),
      { mode: 0o600 },
    );
    const r = await run('mpop', ['-C', conf, '-q', '-a'], { env: cleanEnv(dir), timeoutMs: RUN_TIMEOUT_MS });
    return { r, maildir: md };
  },
};

/** fetchmail's MDA: one /bin/sh per message, `cat` into tmp/, `mv` into new/ (no fsync). */
const FETCHMAIL_MDA = `#!/bin/sh
# usage: mda MAILDIR  (bench/fetch.ts) - one message on stdin into a Maildir, without fsync
n="fm.$$"
[ -e "$1/new/$n" ] && n="$n.$(date +%s%N)"
cat > "$1/tmp/$n" && exec mv "$1/tmp/$n" "$1/new/$n"
`;

const fetchmail: Tool = {
  key: 'fetchmail',
  version: which('fetchmail') !== undefined ? versionOf('fetchmail', ['--version']) : 'not installed',
  durability:
    'an MDA (`mda`), here a 3-line /bin/sh script run once per message: `cat` into Maildir/tmp/, then `mv` into new/; no fsync of file or directory. fetchmail records the UIDL (`-i` idfile, with `--fetchall`/`keep`) at the end of the session',
  available: which('fetchmail') !== undefined,
  async once(dir, port) {
    const md = path.join(dir, 'Maildir');
    const home = path.join(dir, 'home');
    makeMaildir(md);
    mkdirSync(home);
    const mda = path.join(dir, 'mda.sh');
    writeFileSync(mda, FETCHMAIL_MDA, { mode: 0o755 });
    const rc = path.join(dir, 'fetchmailrc');
    writeFileSync(
      rc,
      [
        'set no syslog',
        'set invisible',
        `poll 127.0.0.1 port ${port} protocol pop3 auth password timeout 60`,
        `  user "${USER}" password "${PASSWORD}" is "${USER}" here`,
        "  sslproto ''", // otherwise fetchmail 6.4 upgrades with STLS and fails the certificate check
        '  options keep no rewrite no stripcr',
        `  mda "${mda} ${md}"`,
        '',
      ].join('\n'),
      { mode: 0o600 },
    );
    const r = await run(
      'fetchmail',
      ['-f', rc, '--nosyslog', '--nodetach', '--fetchall', '--pidfile', path.join(dir, 'fetchmail.pid'), '-i', path.join(dir, 'fetchids')],
      { env: cleanEnv(home), timeoutMs: RUN_TIMEOUT_MS },
    );
    return { r, maildir: md };
  },
};

/**
 * getmail 6.18 forks a delivery child per message and installs its SIGCHLD
 * handler only afterwards; a child that exits first goes unnoticed and getmail
 * stops ("waiting child pid N timed out"). As in the interop tests, each child
 * is made to wait a moment first; here GETMAIL_CHILD_DELAY_S (2 ms), which
 * adds up to ~4 s over 2000 messages at most — counted in getmail's time.
 */
const GETMAIL_WRAPPER = [
  'import os, runpy, sys, time',
  '_fork = os.fork',
  'def _late():',
  '    pid = _fork()',
  '    if pid == 0:',
  `        time.sleep(${GETMAIL_CHILD_DELAY_S})`,
  '    return pid',
  'os.fork = _late',
  'g = sys.argv[1]',
  'sys.argv = [g] + sys.argv[2:]',
  "runpy.run_path(g, run_name='__main__')",
].join('\n');

const getmailBin = which('getmail');
const getmail6: Tool = {
  key: 'getmail6',
  version: getmailBin !== undefined ? versionOf(getmailBin, ['--version']) : 'not installed',
  durability:
    '`[destination] type = Maildir`: a forked child per message writes the file in tmp/, `fsync`s it, links it into new/ (no directory fsync; see getmailcore/utilities.py `deliver_maildir`). Run as root, so with `user = nobody` (getmail refuses to deliver as root)',
  available: getmailBin !== undefined,
  async once(dir, port) {
    const md = path.join(dir, 'Maildir');
    const gd = path.join(dir, 'getmail');
    const asRoot = process.getuid?.() === 0;
    makeMaildir(md, asRoot ? 0o777 : undefined);
    mkdirSync(gd);
    const rc = path.join(gd, 'getmailrc');
    writeFileSync(
      rc,
      [
        '[retriever]',
        'type = SimplePOP3Retriever',
        'server = 127.0.0.1',
        `port = ${port}`,
        `username = ${USER}`,
        `password = ${PASSWORD}`,
        'timeout = 20',
        '',
        '[destination]',
        'type = Maildir',
        `path = ${md}/`,
        ...(asRoot ? ['user = nobody'] : []),
        '',
        '[options]',
        'verbose = 0',
        'delete = false',
        'read_all = true',
        'delivered_to = false',
        'received = false',
        '',
      ].join('\n'),
      { mode: 0o600 },
    );
    const python = shebangInterpreter(getmailBin!) ?? 'python3';
    const r = await run(python, ['-c', GETMAIL_WRAPPER, getmailBin!, '--getmaildir', gd, '--rcfile', rc], {
      env: cleanEnv(dir),
      timeoutMs: GETMAIL_TIMEOUT_MS,
    });
    return { r, maildir: md };
  },
};

const TOOL: Record<ToolKey, Tool> = { poplar, mpop, fetchmail, getmail6 };

// --------------------------------------------------------------------------- where the Maildirs live

interface Place {
  /** Short name for the tables. */
  key: 'ordinary' | 'loop';
  dir: string;
  description: string;
  /** Milliseconds to create one empty file there (measured before the runs). */
  createMs: number;
  cleanup(): void;
}

/**
 * The machine's own file system: a directory under /var/tmp (the root file
 * system here, as it would be for a user's home), or `--dir`.
 */
function ordinaryFileSystem(): Omit<Place, 'createMs'> {
  if (DIR !== undefined) return { key: 'ordinary', dir: DIR, description: `${DIR} (chosen with --dir)`, cleanup: () => undefined };
  const dir = mkdtempSync(path.join('/var/tmp', 'poplar-bench-fetch-'));
  chmodSync(dir, 0o755);
  const fs = fsOf(dir);
  return {
    key: 'ordinary',
    dir,
    description: `a directory in /var/tmp on this machine's own, long-used ${fs} file system`,
    cleanup: () => rmSync(dir, { recursive: true, force: true }),
  };
}

/** The type and mount options of the file system holding `dir` (from /proc/self/mounts). */
function fsOf(dir: string): string {
  try {
    const mounts = readFileSync('/proc/self/mounts', 'latin1').split('\n').map((l) => l.split(' '));
    let best: string[] | undefined;
    for (const m of mounts) if (m[1] !== undefined && (dir === m[1] || dir.startsWith(m[1].endsWith('/') ? m[1] : `${m[1]}/`)) && (best === undefined || m[1].length > best[1]!.length)) best = m;
    return best !== undefined ? `${best[2]} (${best[3]})` : 'unknown';
  } catch {
    return 'unknown';
  }
}

/**
 * A fresh ext4 made for this run (an image file on a loop device, default
 * mount options): every fsync there goes through the loop device to the
 * image file, so it is slow, and inode allocation is cheap.
 */
function loopFileSystem(): Omit<Place, 'createMs'> | undefined {
  const img = path.join('/var/tmp', `poplar-bench-fetch-${process.pid}.img`);
  const mnt = mkdtempSync(path.join(os.tmpdir(), 'poplar-bench-fetch-mnt-'));
  const undo = (): void => {
    try {
      execFileSync('umount', [mnt], { stdio: 'ignore' });
    } catch {
      // not mounted
    }
    rmSync(img, { force: true });
    rmSync(mnt, { recursive: true, force: true });
  };
  try {
    execFileSync('truncate', ['-s', String(SCRATCH_FS_BYTES), img]);
    execFileSync('mkfs.ext4', ['-q', '-F', img], { stdio: 'ignore' });
    execFileSync('mount', ['-o', 'loop', img, mnt], { stdio: 'ignore' });
    chmodSync(mnt, 0o755);
    return {
      key: 'loop',
      dir: mnt,
      description: `a fresh ${SCRATCH_FS_BYTES / 1024 ** 3} GiB ext4 made for this run (\`mkfs.ext4\` on an image file in /var/tmp, mounted through a loop device with default options: data=ordered journal, barriers on, so every fsync goes through the loop device to the image file)`,
      cleanup: undo,
    };
  } catch (e) {
    undo();
    log(`no loop-mounted file system (${(e as Error).message.split('\n')[0] ?? ''}); measuring the ordinary one only`);
    return undefined;
  }
}

/** Milliseconds per file to create (open O_CREAT|O_EXCL, close) 2000 empty files in a new directory under `dir`. */
function createCostMs(dir: string): number {
  const d = mkdtempSync(path.join(dir, 'create-cost-'));
  const t0 = performance.now();
  for (let i = 0; i < 2000; i++) closeSync(openSync(path.join(d, String(i)), 'wx'));
  const ms = (performance.now() - t0) / 2000;
  rmSync(d, { recursive: true, force: true });
  return ms;
}

// --------------------------------------------------------------------------- CPU accounting

const CLK_TCK = 100; // sysconf(_SC_CLK_TCK) on every Linux build Node supports

/**
 * CPU seconds (user, system) of this process's reaped children: each client
 * run is a child that has been waited for when `run` resolves, so the
 * difference around a run is that client's CPU time, with its own children
 * (fetchmail's MDA shells, getmail's delivery children, mpop's passwordeval).
 */
function reapedChildrenCpu(): { user: number; sys: number } {
  const s = readFileSync('/proc/self/stat', 'latin1');
  const f = s.slice(s.lastIndexOf(')') + 2).trim().split(' ');
  // fields 16 and 17 of stat (cutime, cstime) = index 13 and 14 here
  return { user: Number(f[13]) / CLK_TCK, sys: Number(f[14]) / CLK_TCK };
}

/** Median CPU milliseconds (user, system) of `n` runs of `file args`, each waited for (its exit status does not matter). */
function startCpuMs(file: string, args: string[], env: NodeJS.ProcessEnv, n = 5): { user: number; sys: number } {
  const users: number[] = [];
  const syss: number[] = [];
  for (let i = 0; i < n; i++) {
    const before = reapedChildrenCpu();
    try {
      execFileSync(file, args, { env, stdio: 'ignore', timeout: 30_000 });
    } catch {
      // a fetch from a port nobody listens on fails, as intended
    }
    const after = reapedChildrenCpu();
    users.push((after.user - before.user) * 1000);
    syss.push((after.sys - before.sys) * 1000);
  }
  return { user: Math.round(median(users)), sys: Math.round(median(syss)) };
}

/** What a `poplar fetch` costs before its first message: an empty Node process, and poplar up to a refused connection. */
interface StartCost {
  emptyNode: { user: number; sys: number };
  poplarStart: { user: number; sys: number };
}

function measureStartCost(dir: string): StartCost {
  const env = cleanEnv(dir, { BENCH_PW: PASSWORD, PATH: `${path.dirname(process.execPath)}:${process.env['PATH'] ?? '/usr/bin:/bin'}` });
  const md = path.join(dir, 'start-Maildir');
  makeMaildir(md);
  const emptyNode = startCpuMs(process.execPath, ['-e', '0'], env);
  // Port 1 on loopback: nothing listens, the connection is refused at once.
  const poplarStart = startCpuMs(POPLAR_BIN, ['fetch', '--once', '--json', '--no-progress', '--host', '127.0.0.1', '--port', '1', '--tls', 'none', '--user', USER, '--password-env', 'BENCH_PW', '--keep', '--maildir', md, '--state', path.join(dir, 'start-ledger')], env);
  return { emptyNode, poplarStart };
}

// --------------------------------------------------------------------------- main

interface Run {
  ms: number;
  /** CPU seconds of the client process (and its children). */
  user: number;
  sys: number;
  /** Share of the machine's CPUs used by everything else (not this client, not Dovecot) during the run, 0..1. */
  others: number;
}

interface ToolResult {
  runs: Run[];
  failures: string[];
  /** A run that did not complete (killed at its timeout, or failed): what it delivered in how long. */
  partial?: { count: number; ms: number; why: string };
  /** Runs were stopped after the first because it was slower than SLOW_RUN_MS (or one failed). */
  cut: boolean;
  /** Failed runs of a third-party client that were tried again (not counted as failures if the retry worked). */
  retried: string[];
}

type Results = Record<Place['key'], Record<ToolKey, ToolResult>>;

function emptyResults(): Record<ToolKey, ToolResult> {
  return {
    poplar: { runs: [], failures: [], cut: false, retried: [] },
    mpop: { runs: [], failures: [], cut: false, retried: [] },
    fetchmail: { runs: [], failures: [], cut: false, retried: [] },
    getmail6: { runs: [], failures: [], cut: false, retried: [] },
  };
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('bench:fetch needs root (private Dovecot, loop mount, getmail user switch)');
  if (!dovecotAvailable()) throw new Error(`${DOVECOT_BIN} is not installed`);
  if (!poplar.available) throw new Error(`${POPLAR_MAIN} missing: run \`npm run build\` first`);

  const startedAt = Date.now();
  const loadStart = os.loadavg();
  const busyStart = systemBusySeconds();
  const mi = machineInfo(DOVECOT_BIN);
  const places: Place[] = [];
  const cleanups: (() => void)[] = [];
  const cleanupAll = (): void => {
    for (const c of cleanups.splice(0).reverse()) c();
  };
  const ordinary = ordinaryFileSystem();
  cleanups.push(ordinary.cleanup);
  const loop = flag('--fs') === 'ordinary' ? undefined : loopFileSystem();
  if (loop !== undefined) cleanups.push(loop.cleanup);
  for (const p of [ordinary, loop]) {
    if (p === undefined || (flag('--fs') !== undefined && flag('--fs') !== p.key)) continue;
    const createMs = createCostMs(p.dir);
    places.push({ ...p, createMs });
    log(`${p.key}: ${p.dir}; creating a file costs ${(createMs * 1000).toFixed(0)} µs there`);
  }
  const startCost = measureStartCost(ordinary.dir);
  log(`start-up CPU: empty node ${startCost.emptyNode.user}+${startCost.emptyNode.sys} ms, poplar fetch to a refused connection ${startCost.poplarStart.user}+${startCost.poplarStart.sys} ms`);
  // Dovecot's mailbox is on the ordinary file system (it is read, and stays in the page cache).
  const mailRoot = path.join(ordinary.dir, 'mail');
  log(`writing ${MESSAGES} messages of ${MESSAGE_SIZE} octets under ${mailRoot}`);
  writeMailbox(mailRoot);
  const dovecot = await startDovecotBench(mailRoot, [{ name: USER, password: PASSWORD }]);
  const results: Results = { ordinary: emptyResults(), loop: emptyResults() };
  const onSignal = (sig: NodeJS.Signals): void => {
    log(`${sig}: stopping Dovecot and removing the scratch directories`);
    void dovecot.stop().finally(() => {
      cleanupAll();
      process.exit(130);
    });
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    const seen = await warmUp(dovecot.port);
    if (seen !== MESSAGES) throw new Error(`Dovecot lists ${seen} messages, expected ${MESSAGES}`);
    log(`Dovecot on 127.0.0.1:${dovecot.port} lists ${seen} messages`);
    if (process.argv.includes('--hold')) {
      // For profiling by hand: keep the server up until a signal (user bench, password in BENCH_PW).
      log(`--hold: Dovecot stays on port ${dovecot.port}; Ctrl-C to stop`);
      await new Promise(() => undefined);
    }
    let n = 0;
    for (let round = 0; round < RUNS; round++) {
      const order = TOOLS.map((_, i) => TOOLS[(i + round) % TOOLS.length]!);
      for (const place of round % 2 === 0 ? places : [...places].reverse()) {
        for (const key of order) {
          const tool = TOOL[key];
          const res = results[place.key][key];
          if (!tool.available || res.cut || (ONLY !== undefined && !ONLY.includes(key))) continue;
          for (let attempt = 1; ; attempt++) {
            execFileSync('sync'); // the previous run's writes and deletions are not left for this one to wait on
            const dir = path.join(place.dir, `${key}-${round}-${n++}`);
            mkdirSync(dir);
            chmodSync(dir, 0o755);
            const cpu0 = reapedChildrenCpu();
            const busy0 = systemBusySeconds();
            const dove0 = dovecot.cpuSeconds();
            const { r, maildir, note } = await tool.once(dir, dovecot.port);
            const cpu1 = reapedChildrenCpu();
            const busy = systemBusySeconds() - busy0;
            const dove = dovecot.cpuSeconds() - dove0;
            const user = cpu1.user - cpu0.user;
            const sys = cpu1.sys - cpu0.sys;
            const others = Math.min(1, Math.max(0, (busy - user - sys - dove) / ((r.ms / 1000) * mi.cores)));
            const { count, tmp } = countDelivered(maildir);
            const ok = r.code === 0 && count === MESSAGES && tmp === 0 && note === undefined;
            log(
              `round ${round + 1} ${place.key} ${key}: ${r.ms} ms, cpu ${(user * 1000).toFixed(0)}+${(sys * 1000).toFixed(0)} ms, ` +
                `others ${(others * 100).toFixed(0)}%, exit ${String(r.code)}, ${count} files${tmp > 0 ? `, ${tmp} left in tmp/` : ''}${note !== undefined ? `, ${note}` : ''}`,
            );
            rmSync(dir, { recursive: true, force: true });
            const failure = `${place.key} round ${round + 1}: exit ${String(r.code)}, ${count} files, ${tmp} in tmp/${note !== undefined ? `, ${note}` : ''}\n${r.describe}`;
            // A third-party client that failed (not one cut at its timeout) gets one more try: getmail6 has a
            // race of its own under load. poplar and mpop are never retried.
            if (!ok && THIRD_PARTY.includes(key) && r.code !== null && attempt === 1) {
              log(`${place.key} ${key}: failed, trying once more`);
              res.retried.push(failure);
              continue;
            }
            if (ok) res.runs.push({ ms: r.ms, user, sys, others });
            else res.partial ??= { count, ms: r.ms, why: r.code === null ? `killed after ${r.ms} ms` : `exit ${String(r.code)}` };
            if (r.ms > SLOW_RUN_MS || !ok) {
              res.cut = true;
              log(`${place.key} ${key}: ${ok ? `slower than ${SLOW_RUN_MS} ms` : 'failed'}, not run again`);
            }
            if (!ok) res.failures.push(failure);
            break;
          }
        }
      }
    }
  } finally {
    await dovecot.stop();
    cleanupAll();
  }

  const runtimeS = (Date.now() - startedAt) / 1000;
  const machineBusy = (systemBusySeconds() - busyStart) / (runtimeS * mi.cores);
  const md = report(results, places, mi, { loadStart, loadEnd: os.loadavg(), machineBusy }, runtimeS, startCost);
  if (ONLY === undefined && flag('--runs') === undefined && flag('--fs') === undefined) writeFileSync(DOC, md);
  process.stdout.write(md);
  let failed = false;
  for (const place of places) {
    for (const k of TOOLS) {
      for (const f of results[place.key][k].retried) log(`${place.key} ${k} failed once (tried again) ${f}`);
      for (const f of results[place.key][k].failures) log(`${place.key} ${k} FAILED ${f}`);
    }
    failed ||= TOOLS.some((k) => !THIRD_PARTY.includes(k) && results[place.key][k].failures.length > 0);
  }
  if (failed) process.exitCode = 1;
}

interface Load {
  loadStart: number[];
  loadEnd: number[];
  /** Share of all CPUs busy (every process) over the whole benchmark. */
  machineBusy: number;
}

function report(results: Results, places: Place[], mi: ReturnType<typeof machineInfo>, load: Load, runtimeS: number, start: StartCost): string {
  const fmt = (x: number, d = 0): string => (Number.isFinite(x) ? x.toFixed(d) : '–');
  const medMs = (r: ToolResult): number => median(r.runs.map((x) => x.ms));
  const medCpuMs = (r: ToolResult): number => median(r.runs.map((x) => (x.user + x.sys) * 1000));
  const lines: string[] = [];
  lines.push('# Fetcher benchmark: `poplar fetch` vs mpop, fetchmail, getmail6', '');
  lines.push(
    `Written by \`npm run bench:fetch\` (bench/fetch.ts) on ${new Date().toISOString()}; the whole run took ${runtimeS.toFixed(0)} s.`,
    '',
    `Each client fetches the same mailbox of **${MESSAGES} messages of ${MESSAGE_SIZE / 1024} KiB** ` +
      '(8192 octets on disk with LF line ends; a little more on the wire with CRLF) from a private Dovecot over ' +
      'loopback (plain POP3, USER/PASS, Dovecot high-performance mode from test/helpers/dovecot.ts) into a Maildir, ' +
      'in keep mode: nothing is deleted, so every run sees the same data. Every run starts from a fresh, empty Maildir ' +
      'and fresh client state (ledger, UIDL file, idfile, getmail dir). ' +
      `Each client runs ${RUNS} times on each file system, in rounds that rotate the order of the clients and alternate ` +
      'the file systems; the figures are medians. Wall time is the client process from start to exit (process start-up, ' +
      'login and QUIT included); CPU time is the user + system time of the client process and its children ' +
      '(cutime/cstime of the benchmark, which reaps them). ' +
      `Every run is checked to leave exactly ${MESSAGES} files in new/+cur/ and none in tmp/. ` +
      '`sync` runs before each run, so no run waits on the writes and deletions of the one before it.',
    '',
    'The file systems:',
    '',
  );
  for (const p of places) lines.push(`- **${p.key}**: ${p.description}. Creating an empty file there costs ${fmt(p.createMs * 1000)} µs (measured by this run).`);
  lines.push('', "Dovecot's mailbox is on the ordinary file system in both cases.", '');
  for (const p of places) {
    const res = results[p.key];
    const mpopMs = medMs(res.mpop);
    const mpopCpu = medCpuMs(res.mpop);
    lines.push(`## ${p.key === 'ordinary' ? 'Ordinary file system' : 'Loop-mounted ext4'}`, '');
    lines.push(
      '| client | median wall time | messages/s | speed vs mpop | CPU per message (user + sys) | CPU vs mpop | others\' load | runs (wall ms / CPU ms) |',
      '|---|---:|---:|---:|---:|---:|---:|---|',
    );
    for (const k of TOOLS) {
      const t = TOOL[k];
      if (!t.available) {
        lines.push(`| ${k} | not installed | | | | | | |`);
        continue;
      }
      const r = res[k];
      if (ONLY !== undefined && !ONLY.includes(k)) continue;
      if (r.runs.length === 0 && r.partial !== undefined) {
        const pt = r.partial;
        const rate = (pt.count / pt.ms) * 1000;
        const what = pt.why.startsWith('killed') ? 'did not finish' : `**failed**${r.retried.length > 0 ? ' twice' : ''}`;
        lines.push(`| ${k} | ${what}: ${pt.count} of ${MESSAGES} in ${fmt(pt.ms / 1000, 1)} s (${pt.why}) | ${fmt(rate)} (partial) | ${fmt(((rate / MESSAGES) * mpopMs) / 1000, 3)}× (partial rate) | | | | – |`);
        continue;
      }
      const m = medMs(r);
      const cpu = medCpuMs(r);
      const others = median(r.runs.map((x) => x.others * 100));
      const runs = r.runs.map((x) => `${x.ms} / ${fmt((x.user + x.sys) * 1000)}`).join(', ');
      const note = r.runs.length < RUNS ? ` (${r.runs.length} run${r.runs.length === 1 ? '' : 's'}${r.cut ? `: slower than ${SLOW_RUN_MS / 1000} s` : ''})` : '';
      const fails =
        (r.failures.length > 0 ? ` (${r.failures.length} failed)` : '') + (r.retried.length > 0 ? ` (${r.retried.length} failed and tried again)` : '');
      lines.push(
        `| ${k} | ${fmt(m / 1000, 2)} s | ${fmt((MESSAGES / m) * 1000)} | ${fmt(mpopMs / m, 2)}× | ${fmt((cpu / MESSAGES) * 1000)} µs | ${fmt(cpu / mpopCpu, 2)}× | ${fmt(others)}% | ${runs}${note}${fails} |`,
      );
    }
    lines.push('');
  }
  lines.push(
    '"speed vs mpop" is mpop\'s median wall time divided by the client\'s (above 1: faster than mpop); "CPU vs mpop" is the ' +
      'client\'s median CPU time divided by mpop\'s (below 1: less CPU than mpop). "others\' load" is the median share of the ' +
      "machine's CPUs that everything except the client and Dovecot used during that client's runs (from /proc/stat): " +
      'above a few percent, other work competed with the benchmark and the wall times are less reliable than the CPU times. ' +
      `To keep the whole benchmark to a few minutes, a client whose first run takes more than ${SLOW_RUN_MS / 1000} s is run ` +
      `only once on that file system, and getmail6 is stopped after ${GETMAIL_TIMEOUT_MS / 1000} s; a run that did ` +
      'not finish is shown with the number of messages it had delivered by then. A fetchmail or getmail6 run that fails ' +
      'is tried once more; a client that fails twice is shown as failed.',
    '',
  );
  const verdicts = places.map((p) => {
    const r = results[p.key];
    const speed = medMs(r.mpop) / medMs(r.poplar);
    const cpu = medCpuMs(r.poplar) / medCpuMs(r.mpop);
    return `${p.key}: ${fmt(speed, 2)}× mpop's speed (${Number.isFinite(speed) ? (speed >= 1.5 ? 'met' : 'not met') : 'not measured'}), ${fmt(cpu, 2)}× its CPU per message (${Number.isFinite(cpu) ? (cpu <= 1 ? 'met' : 'not met') : 'not measured'})`;
  });
  lines.push(`**Target: \`poplar fetch\` at least 1.5× as fast as mpop with no more CPU per message, on both file systems. Measured: ${verdicts.join('; ')}.**`, '');
  lines.push('## Where the CPU goes', '');
  lines.push('Median user and system CPU of the whole run, and what a run costs before its first message (measured by this run, 5 times each):', '');
  lines.push('| | user | system |', '|---|---:|---:|');
  for (const p of places) {
    for (const k of ['poplar', 'mpop'] as const) {
      const r = results[p.key][k];
      if (r.runs.length === 0) continue;
      lines.push(`| ${k}, ${p.key}, ${MESSAGES} messages | ${fmt(median(r.runs.map((x) => x.user * 1000)))} ms | ${fmt(median(r.runs.map((x) => x.sys * 1000)))} ms |`);
    }
  }
  lines.push(
    `| an empty Node process (\`node -e 0\`) | ${fmt(start.emptyNode.user)} ms | ${fmt(start.emptyNode.sys)} ms |`,
    `| \`poplar fetch\` to a port that refuses the connection (start-up and loading the fetch modules) | ${fmt(start.poplarStart.user)} ms | ${fmt(start.poplarStart.sys)} ms |`,
    '',
    'The CPU figures are in units of 10 ms (the kernel\'s clock tick for a process\'s CPU time), so the small ones are coarse. ' +
      'The start-up is paid once per run: over 2000 messages, every 10 ms of it is 5 µs per message.',
    '',
  );
  lines.push('## What each client promises on a crash', '');
  lines.push('The clients do not do the same amount of work to keep mail safe, which matters for the comparison:', '');
  for (const k of TOOLS) lines.push(`- **${k}** (${TOOL[k].version}): ${TOOL[k].durability}.`);
  lines.push(
    '',
    'Configuration details (taken from the interop tests, test/interop/clients.test.ts): mpop `auth user`, ' +
      '`received_header off`, `only_new off`; fetchmail `sslproto \'\'`, `set invisible`, `no rewrite no stripcr`, ' +
      '`--fetchall`; getmail6 `read_all = true`, `delete = false`, `delivered_to`/`received` off. getmail6 runs with a ' +
      `small wrapper that delays each forked delivery child by ${GETMAIL_CHILD_DELAY_S * 1000} ms, to avoid a race in ` +
      'getmail 6.18 (it installs its SIGCHLD handler after forking); that adds at most ' +
      `${(MESSAGES * GETMAIL_CHILD_DELAY_S).toFixed(0)} s to its time. poplar runs as installed, through its launcher ` +
      '(`bin/poplar fetch --once --json --tls none --keep --maildir … --state …`, default settings; the launcher sets ' +
      'UV_THREADPOOL_SIZE=16 when it is not set, see docs/fetch.md).',
    '',
  );
  lines.push('## Machine', '');
  lines.push(
    `- CPU: ${mi.cpu}, ${mi.cores} cores available (\`os.availableParallelism()\`)`,
    `- RAM: ${mi.ramGiB} GiB`,
    `- Load: load average ${load.loadStart.map((x) => x.toFixed(2)).join(' / ')} (1/5/15 min) at the start, ${load.loadEnd.map((x) => x.toFixed(2)).join(' / ')} at the end; ` +
      `all CPUs were ${fmt(load.machineBusy * 100)}% busy over the whole run (every process, the benchmark's own included)`,
    `- OS: ${mi.os}; kernel ${mi.kernel}`,
    `- Node ${mi.node}; ${mi.dovecot.startsWith('2') ? `Dovecot ${mi.dovecot}` : mi.dovecot}`,
    '',
  );
  return lines.join('\n');
}

main().catch((e: unknown) => {
  process.stderr.write(`bench:fetch: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  process.exit(1);
});
