import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { crlfSize } from '../../protocol/message-size.js';
import { native } from '../../protocol/native.js';
import { fileCrlfSize, fileCrlfSizes } from './maildir-store.js';

const dir = mkdtempSync(path.join(tmpdir(), 'poplar-sizes-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
let n = 0;
function file(content: Buffer): string {
  const f = path.join(dir, `f${n++}`);
  writeFileSync(f, content);
  return f;
}

/** Line-shaped content with LF, CRLF and bare CR, sometimes bigger than one 64 KiB read. */
const contentArb = fc.oneof(
  fc.uint8Array({ maxLength: 300 }).map((a) => Buffer.from(a)),
  fc.array(fc.constantFrom('a', 'line\n', 'crlf\r\n', '\r', '\n', '\r\n', '.'), { maxLength: 80 }).map((p) => Buffer.from(p.join(''), 'latin1')),
  fc.integer({ min: 65_530, max: 65_540 }).chain((at) =>
    fc.constantFrom('\r\n', '\n\n', '\r\r', 'x\n').map((pair) => {
      const b = Buffer.alloc(70_000, 0x61);
      b.write(pair, at - 1, 'latin1'); // the pair straddles the first read's end for some `at`
      return b;
    }),
  ),
);

describe('fileCrlfSizes: the POP3 size of many files at once', () => {
  it.runIf(native?.crlfSizes !== undefined)('native batches give crlfSize of the content for any file, in order', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(contentArb, { minLength: 1, maxLength: 12 }), async (contents) => {
        const files = contents.map(file);
        const sizes = await native!.crlfSizes!(files);
        expect([...sizes]).toEqual(contents.map(crlfSize));
      }),
      { numRuns: 200 },
    );
  });

  it('gives the same sizes with and without the native module, undefined for a file that cannot be read', async () => {
    const contents = [Buffer.alloc(0), Buffer.from('a\nb\r\nc\r'), Buffer.alloc(300_000, '\n'), Buffer.from('\r\n.\r\n')];
    const files = [...contents.map(file), path.join(dir, 'missing')];
    mkdirSync(path.join(dir, 'a-directory'));
    files.push(path.join(dir, 'a-directory'));
    // Over one batch (256) and with several batches in flight.
    for (let i = 0; i < 600; i++) files.push(file(Buffer.from(`Subject: ${i}\n\n${'x'.repeat(i)}\n`)));
    const got = await fileCrlfSizes(files);
    const want = await Promise.all(files.map((f) => fileCrlfSize(f).catch(() => undefined)));
    expect(got).toEqual(want);
    expect(got.slice(0, 6)).toEqual([0, 8, 600_000, 5, undefined, undefined]);
  });

  it.runIf(native?.crlfSizes !== undefined)('a FIFO among the files is refused at once, not waited on', async () => {
    const fifo = path.join(dir, 'fifo');
    expect(spawnSync('mkfifo', [fifo]).status).toBe(0);
    const good = file(Buffer.from('x\n'));
    // With a plain open the thread-pool thread would wait for a writer forever.
    const sizes = await Promise.race([native!.crlfSizes!([fifo, good]), new Promise<never>((_, rej) => setTimeout(() => rej(new Error('hung on the FIFO')), 5000))]);
    expect(sizes[0]).toBeLessThan(0);
    expect(sizes[1]).toBe(3);
  });

  it('stops between batches when the login is abandoned', async () => {
    const files = Array.from({ length: 2000 }, (_, i) => file(Buffer.from(`m ${i}\n`)));
    const ac = new AbortController();
    ac.abort(new Error('gone'));
    await expect(fileCrlfSizes(files, ac.signal)).rejects.toThrow('gone');
  });

  it.runIf(native?.crlfSizes !== undefined)('rejects a list that is not made of strings', () => {
    expect(() => native!.crlfSizes!([1 as unknown as string])).toThrow(/string/);
    expect(() => native!.crlfSizes!(['a\0b'])).toThrow(/NUL/);
  });
});
