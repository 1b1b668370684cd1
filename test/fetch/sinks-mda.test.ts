import { describe, it, expect, beforeEach, afterEach } from 'vitest';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { MdaSink } from '../../src/fetch/sinks/mda.js';
import { SinkError } from '../../src/fetch/sinks/util.js';
import type { DeliveryInfo } from '../../src/fetch/sinks/types.js';
import type { Logger } from '../../src/observability/log.js';

let dir: string;

beforeEach(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-sink-mda-'));
});

afterEach(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

const info: DeliveryInfo = { account: 'work', uidl: 'UID-42', size: 123 };
const MSG = Buffer.from('Subject: mda\r\n\r\nline\r\nbare\rcr\r\nend\r\n', 'latin1');

function chunked(buf: Buffer, size: number): Readable {
  const parts: Buffer[] = [];
  for (let i = 0; i < buf.length; i += size) parts.push(buf.subarray(i, i + size));
  return Readable.from(parts);
}

/** A logger that records warnings. */
function recordingLogger(): { logger: Logger; warnings: unknown[][] } {
  const warnings: unknown[][] = [];
  const logger = { warn: (...args: unknown[]) => warnings.push(args) } as unknown as Logger;
  return { logger, warnings };
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function waitGone(pid: number): Promise<boolean> {
  for (let i = 0; i < 100 && alive(pid); i++) await new Promise((r) => setTimeout(r, 20));
  return !alive(pid);
}

async function exists(p: string): Promise<boolean> {
  return fs.access(p).then(
    () => true,
    () => false,
  );
}

describe('MdaSink', () => {
  it("feeds the message to `sh -c 'cat > file'` with LF line ends, and resolves on exit 0", async () => {
    const out = path.join(dir, 'out');
    const sink = new MdaSink({ command: `cat > '${out}'` });
    await sink.deliver(chunked(MSG, 1), info);
    expect(await fs.readFile(out, 'latin1')).toBe('Subject: mda\n\nline\nbare\rcr\nend\n');
    await sink.close();
  });

  it("lineEnding 'crlf' passes the bytes unchanged", async () => {
    const out = path.join(dir, 'out');
    await new MdaSink({ command: `cat > '${out}'`, lineEnding: 'crlf' }).deliver(chunked(MSG, 5), info);
    expect((await fs.readFile(out)).equals(MSG)).toBe(true);
  });

  it('sets POPLAR_ACCOUNT, POPLAR_UIDL, POPLAR_SIZE, POPLAR_FOLDER and the configured env', async () => {
    const out = path.join(dir, 'env');
    const cmd = `cat >/dev/null; printf '%s|%s|%s|%s|%s' "$POPLAR_ACCOUNT" "$POPLAR_UIDL" "$POPLAR_SIZE" "\${POPLAR_FOLDER-unset}" "$EXTRA" > '${out}'`;
    const sink = new MdaSink({ command: cmd, env: { EXTRA: 'x y' } });
    await sink.deliver(Readable.from([MSG]), info);
    expect(await fs.readFile(out, 'utf8')).toBe('work|UID-42|123|unset|x y');
    await sink.deliver(Readable.from([MSG]), { ...info, folder: '.Lists' });
    expect(await fs.readFile(out, 'utf8')).toBe('work|UID-42|123|.Lists|x y');
  });

  it('EX_TEMPFAIL (75) rejects as temporary, with the exit status and stderr', async () => {
    const sink = new MdaSink({ command: "cat >/dev/null; echo 'mailbox over quota, try later' >&2; exit 75" });
    const err = (await sink.deliver(Readable.from([MSG]), info).catch((e: unknown) => e)) as SinkError;
    expect(err).toBeInstanceOf(SinkError);
    expect(err.temporary).toBe(true);
    expect(err.exitCode).toBe(75);
    expect(err.stderr).toBe('mailbox over quota, try later');
    expect(err.message).toMatch(/status 75 \(EX_TEMPFAIL\).*over quota/);
  });

  it('another non-zero status is permanent and keeps the last lines of stderr', async () => {
    const sink = new MdaSink({ command: 'cat >/dev/null; for i in $(seq 1 30); do echo "line $i" >&2; done; exit 1' });
    const err = (await sink.deliver(Readable.from([MSG]), info).catch((e: unknown) => e)) as SinkError;
    expect(err.temporary).toBe(false);
    expect(err.exitCode).toBe(1);
    expect(err.stderr!.split('\n')).toEqual(Array.from({ length: 10 }, (_, i) => `line ${21 + i}`));
  });

  it('an MDA killed by a signal rejects as temporary with the signal', async () => {
    const sink = new MdaSink({ command: 'cat >/dev/null; kill -KILL $$' });
    const err = (await sink.deliver(Readable.from([MSG]), info).catch((e: unknown) => e)) as SinkError;
    expect(err).toBeInstanceOf(SinkError);
    expect(err.exitSignal).toBe('SIGKILL');
    expect(err.exitCode).toBeUndefined();
    expect(err.temporary).toBe(true);
  });

  it('an MDA that never reads stdin and exits 0 counts as delivered (after the source is read to its end), with a warning', async () => {
    const { logger, warnings } = recordingLogger();
    const big = Buffer.alloc(4 * 1024 * 1024, 'z'); // far more than a pipe holds: EPIPE for sure
    let consumed = 0;
    const source = Readable.from(
      (function* () {
        for (let i = 0; i < big.length; i += 65536) {
          consumed += 65536;
          yield big.subarray(i, i + 65536);
        }
      })(),
    );
    await new MdaSink({ command: 'exit 0', logger, spool: false }).deliver(source, info);
    expect(consumed).toBe(big.length);
    expect(warnings).toHaveLength(1);
    expect(String(warnings[0]![1])).toMatch(/without reading the whole message/);
    // Spooled, stdin is a file: not reading it is the MDA's own business.
    await new MdaSink({ command: 'exit 0', logger }).deliver(Readable.from([big]), info);
    expect(warnings).toHaveLength(1);
  });

  it('an MDA that never reads stdin and fails gives its status, not EPIPE', async () => {
    const err = (await new MdaSink({ command: 'echo no >&2; exit 3', spool: false })
      .deliver(Readable.from([Buffer.alloc(2 * 1024 * 1024, 'q')]), info)
      .catch((e: unknown) => e)) as SinkError;
    expect(err).toBeInstanceOf(SinkError);
    expect(err.exitCode).toBe(3);
    expect(err.temporary).toBe(false);
    expect(err.stderr).toBe('no');
  });

  it('a timeout stops the whole process group and rejects as temporary', async () => {
    const pidFile = path.join(dir, 'pid');
    const sink = new MdaSink({ command: `cat >/dev/null; sleep 30 & echo $! > '${pidFile}'; wait`, timeoutMs: 300, killGraceMs: 200 });
    const t0 = Date.now();
    const err = (await sink.deliver(Readable.from([MSG]), info).catch((e: unknown) => e)) as SinkError;
    expect(Date.now() - t0).toBeLessThan(5000);
    expect(err).toBeInstanceOf(SinkError);
    expect(err.temporary).toBe(true);
    expect(err.message).toMatch(/timed out/);
    const pid = Number(await fs.readFile(pidFile, 'utf8'));
    expect(await waitGone(pid)).toBe(true); // the grandchild too
  });

  for (const spool of [true, false]) {
    describe(spool ? 'spooled (default)' : 'piped (spool: false)', () => {
      it('an abort while the source is silent never lets the MDA see end of input: nothing is delivered', async () => {
        const final = path.join(dir, 'final');
        const partial = path.join(dir, 'partial');
        // Like a careful MDA: write to a temporary name, publish only after a complete read.
        const sink = new MdaSink({ command: `cat > '${partial}' && mv '${partial}' '${final}'`, spool });
        const source = new PassThrough();
        source.write(Buffer.from('Subject: half\r\n\r\nfirst half\r\n'));
        const ac = new AbortController();
        const p = sink.deliver(source, info, ac.signal);
        // Piped, the MDA runs and has part of the message; spooled, it has not even started.
        if (!spool) for (let i = 0; i < 100 && !(await exists(partial)); i++) await new Promise((r) => setTimeout(r, 10));
        else await new Promise((r) => setTimeout(r, 50));
        expect(await exists(partial)).toBe(!spool);
        ac.abort();
        await expect(p).rejects.toMatchObject({ name: 'AbortError' });
        await new Promise((r) => setTimeout(r, 100));
        expect(await exists(final)).toBe(false);
      });

      it('a source that fails mid-message is never ended as if complete: nothing is delivered', async () => {
        const final = path.join(dir, 'final');
        const partial = path.join(dir, 'partial');
        const sink = new MdaSink({ command: `cat > '${partial}' && mv '${partial}' '${final}'`, spool });
        let n = 0;
        const source = new Readable({
          read() {
            if (n++ < 3) this.push(Buffer.from(`line ${n}\r\n`));
            else setTimeout(() => this.destroy(new Error('POP3 connection lost')), 20);
          },
        });
        await expect(sink.deliver(source, info)).rejects.toThrow(/connection lost/);
        await new Promise((r) => setTimeout(r, 100));
        expect(await exists(final)).toBe(false);
      });
    });
  }

  it('a command that cannot run at all is a clean rejection', async () => {
    const err = (await new MdaSink({ command: 'cat >/dev/null; /nonexistent/mda' }).deliver(Readable.from([MSG]), info).catch((e: unknown) => e)) as SinkError;
    expect(err.exitCode).toBe(127);
    expect(err.stderr).toMatch(/nonexistent/);
    await expect(new MdaSink({ command: 'true', cwd: path.join(dir, 'missing') }).deliver(Readable.from([MSG]), info)).rejects.toBeInstanceOf(SinkError);
  });

  it('spooled: the MDA starts only once the message is complete, and gets all of it even if the fetcher is SIGKILLed meanwhile', async () => {
    const flag = path.join(dir, 'started');
    const final = path.join(dir, 'final');
    const script = path.join(dir, 'fetcher.mts');
    const mdaModule = pathToFileURL(path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../src/fetch/sinks/mda.ts')).href;
    const tsx = pathToFileURL(path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../node_modules/tsx/dist/esm/index.mjs')).href;
    await fs.writeFile(
      script,
      `import { Readable } from 'node:stream';
import { MdaSink } from ${JSON.stringify(mdaModule)};
const sink = new MdaSink({ command: ${JSON.stringify(`echo go > '${flag}'; sleep 0.5; cat > '${final}.tmp' && mv '${final}.tmp' '${final}'`)} });
async function* slow() {
  for (let i = 0; i < 50; i++) {
    yield Buffer.from('line ' + i + '\\r\\n');
    await new Promise((r) => setTimeout(r, 10));
  }
}
await sink.deliver(Readable.from(slow()), { account: 'a', uidl: 'u', size: 0 });
`,
    );
    const child = spawn(process.execPath, ['--import', tsx, script], { stdio: 'inherit' });
    const exit = once(child, 'exit');
    // Not started while the message is still arriving (50 lines, 10 ms apart).
    await new Promise((r) => setTimeout(r, 200));
    expect(await exists(flag)).toBe(false);
    for (let i = 0; i < 300 && !(await exists(flag)); i++) await new Promise((r) => setTimeout(r, 10));
    expect(await exists(flag)).toBe(true);
    child.kill('SIGKILL'); // the fetcher dies while the MDA runs
    await exit;
    for (let i = 0; i < 300 && !(await exists(final)); i++) await new Promise((r) => setTimeout(r, 10));
    expect(await fs.readFile(final, 'latin1')).toBe(Array.from({ length: 50 }, (_, i) => `line ${i}\n`).join(''));
  });

  it('leaves no spool file behind', async () => {
    const spoolDir = path.join(dir, 'spool');
    await fs.mkdir(spoolDir);
    const sink = new MdaSink({ command: 'cat >/dev/null', spoolDir });
    await sink.deliver(Readable.from([MSG]), info);
    await expect(new MdaSink({ command: 'cat >/dev/null; exit 1', spoolDir }).deliver(Readable.from([MSG]), info)).rejects.toBeInstanceOf(SinkError);
    const failing = new Readable({
      read() {
        this.destroy(new Error('lost'));
      },
    });
    await expect(sink.deliver(failing, info)).rejects.toThrow(/lost/);
    expect(await fs.readdir(spoolDir)).toEqual([]);
  });

  it('handles many deliveries in a row without leaking processes or listeners', async () => {
    const out = path.join(dir, 'count');
    const sink = new MdaSink({ command: `cat >> '${out}'` });
    const ac = new AbortController();
    for (let i = 0; i < 40; i++) await sink.deliver(Readable.from([Buffer.from(`m${i}\r\n`)]), info, ac.signal);
    expect((await fs.readFile(out, 'utf8')).split('\n').filter(Boolean)).toHaveLength(40);
  });
});
