/**
 * RETR of a 50 MB message from the PostgreSQL store keeps less than 20 MB
 * alive: the body streams in chunks with backpressure. Measured in a child
 * process (with --expose-gc) so that the test runner's own memory does not
 * blur the figure. Node lets released buffers pile up to some 30 MB before
 * it collects them, whatever streams them (the child measures a control
 * without the database); the RSS growth without forced collections is
 * checked against that control.
 */
import { execFile } from 'node:child_process';
import path from 'node:path';
import { Readable } from 'node:stream';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { ROOT } from '../helpers/cli.js';
import { lacksPostgres, POSTGRES_CONNECTION } from '../helpers/peers.js';
import { pgSchema } from './pg.js';

const PG_DOWN = await lacksPostgres();
const TSX = pathToFileURL(path.join(ROOT, 'node_modules/tsx/dist/loader.mjs')).href;
const MB = 1024 * 1024;

type Run = { growth: number; wire: number; ms: number };

describe.skipIf(PG_DOWN)('PostgreSQL store: memory while streaming', () => {
  it('streams a 50 MB message through the RETR encoder with less than 20 MB of RSS growth', async () => {
    const db = await pgSchema();
    const store = db.store();
    const line = Buffer.from('QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAx\r\n');
    const size = 50 * MB;
    async function* body(): AsyncGenerator<Buffer> {
      yield Buffer.from('Subject: big\r\nContent-Transfer-Encoding: base64\r\n\r\n');
      const block = Buffer.concat(Array.from({ length: Math.ceil(64 * 1024 / line.length) }, () => line));
      for (let sent = 0; sent < size; sent += block.length) yield block;
    }
    await store.deliver('big', Readable.from(body()));
    await store.deliver('big', Buffer.alloc(3 * MB, 0x42)); // read first, to warm up
    const run = async (mode: string): Promise<Run> => {
      const { stdout } = await promisify(execFile)(
        process.execPath,
        ['--expose-gc', '--import', TSX, path.join(ROOT, 'test/store/rss-child.ts'), JSON.stringify(POSTGRES_CONNECTION), db.name, 'big', mode],
        { cwd: ROOT, timeout: 120_000 },
      );
      return JSON.parse(stdout.trim().split('\n').pop()!) as Run;
    };
    const r = { raw: await run('raw'), live: await run('live'), control: await run('control') };
    const f = (x: Run): string => `RSS +${(x.growth / MB).toFixed(1)} MB, ${x.ms.toFixed(0)} ms (${(x.wire / MB / (x.ms / 1000)).toFixed(0)} MB/s)`;
    console.log(`postgres store: RETR of ${(r.raw.wire / MB).toFixed(1)} MB: ${f(r.raw)}; with a collection every 4 MB: ${f(r.live)}; control without the database: ${f(r.control)}`);
    expect(r.raw.wire).toBeGreaterThan(size);
    expect(r.live.wire).toBe(r.raw.wire);
    expect(r.live.growth).toBeLessThan(20 * MB);
    expect(r.raw.growth).toBeLessThan(r.control.growth + 20 * MB);
  });
});
