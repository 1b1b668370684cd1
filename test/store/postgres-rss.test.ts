/**
 * The memory a 50 MB message costs a `poplar serve` node on the PostgreSQL
 * store, measured on the server process itself: the test delivers the
 * message, then RETRs it (and TOPs most of it) over a real socket while it
 * samples the server's VmRSS from /proc every few milliseconds. The growth
 * over the baseline taken after a warm-up RETR must stay under 20 MB, and
 * the unstuffed bytes must hash to what was delivered. Once with the native
 * encoder and once with the JavaScript one (POPLAR_NO_NATIVE=1).
 */
import { createHash, randomBytes } from 'node:crypto';
import { promises as fs, readFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/observability/log.js';
import { native } from '../../src/protocol/native.js';
import { DotUnstuffer } from '../../src/protocol/dot-unstuff.js';
import { PostgresStore } from '../../src/store/postgres/postgres-store.js';
import { startServe, type ServeProcess } from '../helpers/cli.js';
import { lacksPostgres, POSTGRES_CONNECTION } from '../helpers/peers.js';
import { PG_URL } from './pg.js';

const PG_DOWN = await lacksPostgres();
const MB = 1024 * 1024;
const LIMIT = 20 * MB;

/** A realistic big message: a short text part (with lines that need dot-stuffing) and a 50 MB base64 attachment. */
function bigMessage(): { raw: Buffer; bodyLines: number } {
  const head = [
    'From: sender@example.org',
    'To: alice@example.org',
    'Subject: the big one',
    'MIME-Version: 1.0',
    'Content-Type: multipart/mixed; boundary="b1"',
    '',
    '--b1',
    'Content-Type: text/plain',
    '',
    '.a line that starts with a dot',
    '..and one with two',
    '.',
    '--b1',
    'Content-Type: application/octet-stream',
    'Content-Transfer-Encoding: base64',
    '',
    '',
  ].join('\r\n');
  const b64 = randomBytes(38 * MB).toString('base64');
  const lines: string[] = [];
  for (let i = 0; i < b64.length; i += 76) lines.push(b64.slice(i, i + 76));
  const raw = Buffer.from(`${head}${lines.join('\r\n')}\r\n--b1--\r\n`, 'latin1');
  return { raw, bodyLines: raw.toString('latin1').split('\r\n\r\n', 2)[1]!.split('\r\n').length - 1 };
}

function vmRss(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'latin1'));
  return m === null ? 0 : Number(m[1]) * 1024;
}

/** A POP3 client on a real socket that reads a multi-line reply at `rate` bytes/s (0: as fast as it can). */
class Client {
  readonly #sock: net.Socket;
  #buf: Buffer = Buffer.alloc(0);
  #wake: (() => void) | null = null;

  private constructor(sock: net.Socket) {
    this.#sock = sock;
    sock.on('data', (d: Buffer) => {
      this.#buf = this.#buf.length === 0 ? d : Buffer.concat([this.#buf, d]);
      this.#wake?.();
    });
  }

  static async connect(port: number): Promise<Client> {
    const sock = net.connect(port, '127.0.0.1');
    await new Promise<void>((resolve, reject) => sock.once('connect', resolve).once('error', reject));
    const c = new Client(sock);
    await c.line();
    return c;
  }

  async line(): Promise<string> {
    for (;;) {
      const i = this.#buf.indexOf('\r\n');
      if (i >= 0) {
        const l = this.#buf.subarray(0, i).toString('latin1');
        this.#buf = this.#buf.subarray(i + 2);
        return l;
      }
      await new Promise<void>((r) => (this.#wake = r));
    }
  }

  async cmd(c: string): Promise<string> {
    this.#sock.write(`${c}\r\n`);
    return this.line();
  }

  /** Sends `c`, reads the status line and the unstuffed body into a hash; returns [status, sha256 hex, wire bytes, ms]. */
  async multi(c: string, rate: number): Promise<{ status: string; sha256: string; wire: number; ms: number }> {
    const status = await this.cmd(c);
    const hash = createHash('sha256');
    const un = new DotUnstuffer();
    const t0 = performance.now();
    let wire = 0;
    for (;;) {
      const chunk = this.#buf;
      this.#buf = Buffer.alloc(0);
      if (chunk.length > 0) {
        wire += chunk.length;
        const r = un.push(chunk);
        for (const d of r.data) hash.update(d);
        if (r.done) {
          this.#buf = r.rest ?? Buffer.alloc(0);
          break;
        }
        const ahead = rate > 0 ? (wire / rate) * 1000 - (performance.now() - t0) : 0;
        if (ahead > 1) {
          this.#sock.pause();
          await new Promise((r) => setTimeout(r, ahead));
          this.#sock.resume();
        }
      }
      if (this.#buf.length === 0) await new Promise<void>((r) => (this.#wake = r));
    }
    return { status, sha256: hash.digest('hex'), wire, ms: performance.now() - t0 };
  }

  close(): void {
    this.#sock.destroy();
  }
}

describe.skipIf(PG_DOWN)('poplar serve on the PostgreSQL store: memory of a 50 MB RETR', () => {
  const schema = `poplar_rss_${randomBytes(6).toString('hex')}`;
  const admin = new pg.Pool({ ...POSTGRES_CONNECTION, max: 1 });
  let dir: string;
  let store: PostgresStore;
  const big = bigMessage();
  const topLines = Math.floor(big.bodyLines * 0.6);
  const warm = big.raw.subarray(0, big.raw.indexOf('\r\n', 4 * MB) + 2);
  const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
  const topExpected = ((): string => {
    let at = big.raw.indexOf('\r\n\r\n') + 4;
    for (let n = 0; n < topLines; n++) at = big.raw.indexOf('\r\n', at) + 2;
    return sha(big.raw.subarray(0, at));
  })();

  beforeAll(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-pg-rss-'));
    await admin.query(`CREATE SCHEMA ${schema}`);
    await fs.writeFile(path.join(dir, 'users'), 'alice:{PLAIN}secret::::::\n', { mode: 0o600 });
    await fs.writeFile(
      path.join(dir, 'poplar.toml'),
      [
        `data_dir = ${JSON.stringify(path.join(dir, 'data'))}`,
        '[server]',
        'listen = ["127.0.0.1:0"]',
        'listen_tls = []',
        '[auth]',
        `users = ${JSON.stringify(path.join(dir, 'users'))}`,
        '[store]',
        'type = "postgres"',
        '[store.postgres]',
        `url = "${PG_URL}"`,
        `schema = "${schema}"`,
        'pool_size = 4',
        '',
      ].join('\n'),
    );
    // The first server applies the migrations; then this process delivers as an MTA-side program would.
    const first = await serve({});
    await first.stop();
    const p = new pg.Pool({ ...POSTGRES_CONNECTION, max: 2, options: `-c search_path=${schema}` });
    store = new PostgresStore(p, { logger: silentLogger(), ownsPool: true, sweepIntervalMs: 0 });
    await store.deliver('alice', big.raw);
    await store.deliver('alice', warm); // message 2: the warm-up
  }, 120_000);

  afterAll(async () => {
    await store?.close();
    await admin.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
    await admin.end();
    await fs.rm(dir, { recursive: true, force: true });
  });

  function serve(env: NodeJS.ProcessEnv): Promise<ServeProcess> {
    return startServe(['--config', path.join(dir, 'poplar.toml')], { cwd: dir, expectListeners: 1, env });
  }

  /** Runs `fn` while sampling the server's VmRSS every 2 ms; returns the peak growth over `base`. */
  async function peakDuring<T>(pid: number, base: number, fn: () => Promise<T>): Promise<{ result: T; growth: number }> {
    let peak = base;
    const sample = (): void => {
      peak = Math.max(peak, vmRss(pid));
    };
    const timer = setInterval(sample, 2);
    try {
      const result = await fn();
      sample();
      return { result, growth: peak - base };
    } finally {
      clearInterval(timer);
    }
  }

  const encoders = [
    { name: 'native encoder', env: {}, skip: native?.stuffInto === undefined },
    { name: 'JavaScript encoder (POPLAR_NO_NATIVE=1)', env: { POPLAR_NO_NATIVE: '1' }, skip: false },
  ];

  for (const enc of encoders) {
    it.skipIf(enc.skip)(`RETR and TOP of a 50 MB message grow the server's RSS by less than 20 MB, byte-exact (${enc.name})`, async () => {
      const node = await serve(enc.env);
      const pid = node.child.pid!;
      const c = await Client.connect(node.plainPort);
      try {
        expect(await c.cmd('USER alice')).toMatch(/^\+OK/);
        expect(await c.cmd('PASS secret')).toMatch(/^\+OK/);
        expect((await c.multi('RETR 2', 0)).sha256).toBe(sha(warm));
        await new Promise((r) => setTimeout(r, 300));
        const base = vmRss(pid);

        // A client at a realistic pace (40 MB/s), then one as fast as loopback goes, then TOP of 60 % of the body.
        const paced = await peakDuring(pid, base, () => c.multi('RETR 1', 40 * MB));
        const fast = await peakDuring(pid, base, () => c.multi('RETR 1', 0));
        const top = await peakDuring(pid, base, () => c.multi(`TOP 1 ${topLines}`, 0));
        const f = (x: { growth: number }): string => `+${(x.growth / MB).toFixed(1)} MB`;
        console.log(
          `postgres store, ${enc.name}: server RSS ${(base / MB).toFixed(0)} MB before; RETR of ${(paced.result.wire / MB).toFixed(1)} MB at 40 MB/s ${f(paced)}, ` +
            `at full speed ${f(fast)} (${(fast.result.wire / MB / (fast.result.ms / 1000)).toFixed(0)} MB/s), TOP ${f(top)}`,
        );

        expect(paced.result.status).toBe(`+OK ${big.raw.length} octets`);
        expect(paced.result.sha256).toBe(sha(big.raw));
        expect(fast.result.sha256).toBe(sha(big.raw));
        expect(paced.result.wire).toBeGreaterThan(50 * MB);
        expect(top.result.status).toMatch(/^\+OK/);
        expect(top.result.sha256).toBe(topExpected);
        expect(paced.growth).toBeLessThan(LIMIT);
        expect(fast.growth).toBeLessThan(LIMIT);
        expect(top.growth).toBeLessThan(LIMIT);
        expect(await c.cmd('QUIT')).toMatch(/^\+OK/);
      } finally {
        c.close();
        await node.stop();
      }
    }, 120_000);
  }
});
