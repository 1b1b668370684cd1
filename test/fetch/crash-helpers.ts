/** The crash tests' pieces: a Dovecot maildrop of numbered messages, and `poplar fetch` runs killed with SIGKILL. */
import { spawn } from 'node:child_process';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Pop3Client } from '../../src/client/index.js';
import { poplarArgs, ROOT } from '../helpers/cli.js';
import { seqMessage } from './helpers.js';

/** Put messages 0 … count-1 (`messageOf(i)`, CRLF line ends; default `seqMessage(i, 120)`) into `<mailRoot>/<user>` for Dovecot. */
export async function fillMaildrop(mailRoot: string, user: string, count: number, messageOf: (i: number) => string = (i) => seqMessage(i, 120)): Promise<void> {
  const box = path.join(mailRoot, user);
  for (const d of ['new', 'cur', 'tmp']) await fs.mkdir(path.join(box, d), { recursive: true });
  const writes: Promise<void>[] = [];
  for (let i = 0; i < count; i++) {
    writes.push(fs.writeFile(path.join(box, 'new', `${1_700_000_000 + i}.M${i}P1.crash`), messageOf(i).replace(/\r\n/g, '\n')));
  }
  await Promise.all(writes);
}

export interface FetchRun {
  code: number | null;
  signal: string | null;
  stdout: string;
  stderr: string;
}

export interface FetchRunOptions {
  port: number;
  user: string;
  mode: '--keep' | '--delete';
  /** The sink flags, e.g. ['--mbox', file]. */
  sink: string[];
  /** The ledger. */
  state: string;
  /** Grows while the run delivers (file count, file size): `delivering` kills only once it has changed. */
  progress: () => Promise<number>;
  /** `delivering`: SIGKILL a random moment after the first delivery; `any`: at a random moment; undefined: let it finish. */
  killAt?: 'delivering' | 'any';
  env?: NodeJS.ProcessEnv;
  /** A config file to fetch with instead of the account flags (port, user, mode, sink and state are then unused). */
  config?: string;
}

/** One run of `poplar fetch --once` against Dovecot, perhaps killed with SIGKILL. */
export async function runFetch(o: FetchRunOptions): Promise<FetchRun> {
  const args =
    o.config !== undefined
      ? ['fetch', '--once', '--config', o.config, '--json']
      : ['fetch', '--once', '--host', '127.0.0.1', '--port', String(o.port), '--tls', 'none', '--user', o.user, '--password-env', 'PW', o.mode, ...o.sink, '--state', o.state, '--json'];
  const child = spawn(process.execPath, poplarArgs(args), { cwd: ROOT, env: { ...process.env, ...o.env, PW: 'pw' }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<{ code: number | null; signal: string | null }>((resolve) => child.on('close', (code, signal) => resolve({ code, signal })));
  let done = false;
  void exited.then(() => (done = true));
  if (o.killAt === 'any') {
    await Promise.race([sleep(100 + Math.random() * 600), exited]);
    child.kill('SIGKILL');
  } else if (o.killAt === 'delivering') {
    // Wait until this run has delivered something, then kill after a random moment.
    const before = await o.progress();
    while (!done && (await o.progress()) === before) await sleep(3);
    await Promise.race([sleep(Math.random() * 25), exited]); // a fetch delivers hundreds or thousands of messages a second
    child.kill('SIGKILL');
  }
  return { ...(await exited), stdout, stderr };
}

/** Counts, over several runs, what the settling step reported (its log line on stderr). */
export class SettleTally {
  recovered = 0;
  refetched = 0;

  add(stderr: string): void {
    const m = /(\d+) deliveries were interrupted; (\d+) had arrived/.exec(stderr);
    if (m) {
      this.recovered += Number(m[2]);
      this.refetched += Number(m[1]) - Number(m[2]);
    }
  }
}

/** How many messages the server lists for `user`. */
export async function onServer(port: number, user: string): Promise<number> {
  const c = await Pop3Client.connect({ host: '127.0.0.1', port, tls: 'none' });
  await c.login(user, 'pw');
  const n = (await c.uidl()).length;
  await c.quit();
  return n;
}

/** UIDL → X-Seq of every message the server lists for `user`. */
export async function seqByUidl(port: number, user: string): Promise<Map<string, number>> {
  const c = await Pop3Client.connect({ host: '127.0.0.1', port, tls: 'none' });
  await c.login(user, 'pw');
  const out = new Map<string, number>();
  for (const { number, uid } of await c.uidl()) {
    const head = (await c.topBuffer(number, 0)).toString('latin1');
    out.set(uid, Number(/^X-Seq: (\d+)\r?$/m.exec(head)![1]));
  }
  await c.quit();
  return out;
}

/** Entries of a directory (0 when it does not exist yet). */
export async function filesIn(dir: string): Promise<number> {
  try {
    return (await fs.readdir(dir)).length;
  } catch {
    return 0;
  }
}

/** Size of a file (0 when it does not exist yet). */
export async function sizeOf(file: string): Promise<number> {
  return (await fs.stat(file).catch(() => ({ size: 0 }))).size;
}
