/**
 * Child process for the RSS test: opens a PostgreSQL maildrop and streams
 * message 1 (after reading message 2 to warm up) through the RETR encoder into a slow writer (backpressure as a
 * socket gives it), sampling the resident set size. Twice: as the server
 * runs (the garbage collector frees released buffers when it likes), and
 * with a collection every 4 MB (what the stream really keeps alive). Then
 * the same 50 MB of fresh buffers without the database, as a control: the
 * memory Node lets released buffers take before it collects them.
 * Prints one JSON line. argv: connection (JSON) schema user
 */
import { Readable, Writable } from 'node:stream';
import pg from 'pg';
import { silentLogger } from '../../src/observability/log.js';
import { DotStuffer } from '../../src/protocol/dot-stuff.js';
import { PostgresStore } from '../../src/store/postgres/postgres-store.js';

const [connection, schema, user, mode] = process.argv.slice(2);
const gc = (globalThis as { gc?: () => void }).gc!;
const pool = new pg.Pool({ ...(JSON.parse(connection!) as pg.PoolConfig), max: 4, options: `-c search_path=${schema}` });
const store = new PostgresStore(pool, { logger: silentLogger(), ownsPool: true, sweepIntervalMs: 0 });
const md = await store.open({ username: user! });

async function measure(source: () => Promise<Readable>, collectEvery: number): Promise<{ growth: number; wire: number; ms: number }> {
  gc();
  await new Promise((r) => setTimeout(r, 100));
  const base = process.memoryUsage().rss;
  let peak = base;
  const sample = (): void => {
    const rss = process.memoryUsage().rss;
    if (rss > peak) peak = rss;
  };
  const timer = setInterval(sample, 5);
  let wire = 0;
  let nextCollect = collectEvery;
  const socket = new Writable({
    highWaterMark: 64 * 1024,
    write(chunk: Buffer, _enc, done) {
      wire += chunk.length;
      if (collectEvery > 0 && wire >= nextCollect) {
        nextCollect += collectEvery;
        sample();
        gc();
      }
      setImmediate(done); // a socket that drains one write per turn of the loop
    },
  });
  const drain = (): Promise<void> => new Promise((r) => socket.once('drain', r));
  const stuffer = new DotStuffer({});
  const t0 = performance.now();
  for await (const chunk of await source()) {
    const out = stuffer.pushJoined(chunk as Buffer);
    if (out !== null && !socket.write(out)) await drain();
    sample();
  }
  for (const piece of stuffer.end()) socket.write(piece);
  await new Promise<void>((r) => socket.end(r));
  clearInterval(timer);
  return { growth: peak - base, wire, ms: performance.now() - t0 };
}

// Warm up on message 2 (a few MB): the code paths, and the pool connections a read with prefetch uses.
for await (const _ of await md.read(1)) void _;
const size = md.messages[0]!.size;
const block = Buffer.alloc(256 * 1024, 0x41);
const result =
  mode === 'control'
    ? await measure(async () => Readable.from((function* () {
        for (let n = 0; n < size; n += block.length) yield Buffer.from(block);
      })()), 0)
    : await measure(() => md.read(0), mode === 'live' ? 4 * 1024 * 1024 : 0);
await md.release();
await store.close();
process.stdout.write(JSON.stringify(result) + '\n');
