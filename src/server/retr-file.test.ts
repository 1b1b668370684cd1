import { spawnSync } from 'node:child_process';
import { mkdtempSync, openSync, closeSync, fsyncSync, rmSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { edgeCorpus, expectedRetr, expectedTop } from '../../test/corpus/corpus.js';
import type { NativeCodec } from '../protocol/native.js';
import { fileCodec, sendStuffedFile, sendStuffedStream, streamCodec, type WireOut } from './retr-file.js';

/**
 * A connection that keeps every written buffer by reference and copies it
 * only when it "flushes" (later, in drain): if a buffer were handed back to
 * the pool and reused before its write callback, the copy would show it.
 */
class LazyWire implements WireOut {
  readonly received: Buffer[] = [];
  readonly #pending: Array<{ data: Buffer; written: (() => void) | undefined }> = [];
  closed = false;
  /** Close the connection once this many bytes were written. */
  closeAfter = Infinity;
  #bytes = 0;
  drains = 0;

  write(data: Buffer, written?: () => void): void {
    if (this.closed) {
      written?.();
      return;
    }
    this.#pending.push({ data, written });
    this.#bytes += data.length;
    if (this.#bytes >= this.closeAfter) this.closed = true;
  }

  get needsDrain(): boolean {
    return this.#pending.length >= 3;
  }

  async drain(): Promise<boolean> {
    this.drains++;
    await new Promise((r) => setImmediate(r));
    this.flush();
    return !this.closed;
  }

  flush(): void {
    for (const { data, written } of this.#pending.splice(0)) {
      this.received.push(Buffer.from(data));
      written?.();
    }
  }

  get output(): Buffer {
    this.flush();
    return Buffer.concat(this.received);
  }
}

/** The real codec, except that every chunk is "not in the page cache": the thread-pool path. */
function coldCodec(codec: Required<NativeCodec>): Required<NativeCodec> & { fallbacks: number } {
  const c = { ...codec, fallbacks: 0 };
  c.readStuffedInto = () => {
    c.fallbacks++;
    return -1;
  };
  return c;
}

const dir = mkdtempSync(path.join(tmpdir(), 'poplar-retr-file-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function bigMessage(): Buffer {
  let s = 'Subject: big\n\n';
  for (let i = 0; s.length < 3 * 1024 * 1024 + 12345; i++) s += i % 9 === 0 ? `.dot line ${i}\n` : i % 17 === 0 ? `crlf ${i}\r\n` : `line ${i} ${'y'.repeat(i % 120)}\n`;
  return Buffer.from(s, 'latin1');
}

const corpus = [...edgeCorpus(), { name: '3 MiB with dots and mixed line ends', raw: bigMessage() }];

describe.runIf(fileCodec !== undefined)('sendStuffedFile (RETR from a Maildir file with the native encoder)', () => {
  const codec = fileCodec!;
  const files = new Map<string, string>();
  beforeAll(() => {
    corpus.forEach((m, i) => {
      const f = path.join(dir, `m${i}`);
      writeFileSync(f, m.raw);
      files.set(m.name, f);
    });
  });

  for (const m of corpus) {
    it(`sends exactly the RETR bytes: ${m.name}`, async () => {
      for (const c of [codec, coldCodec(codec)]) {
        const fh = await open(files.get(m.name)!, 'r');
        const wire = new LazyWire();
        try {
          const sent = await sendStuffedFile(c, fh, wire);
          const out = wire.output;
          expect(out.equals(expectedRetr(m.raw))).toBe(true);
          expect(sent).toBe(out.length);
        } finally {
          await fh.close();
        }
      }
    });
  }

  it('reuses no output buffer before the socket is done with it, with several messages in flight at once', async () => {
    const big = files.get('3 MiB with dots and mixed line ends')!;
    const wires = Array.from({ length: 4 }, () => new LazyWire());
    const handles = await Promise.all(wires.map(() => open(big, 'r')));
    try {
      await Promise.all(wires.map((w, i) => sendStuffedFile(i % 2 === 0 ? codec : coldCodec(codec), handles[i]!, w)));
      const want = expectedRetr(corpus.at(-1)!.raw);
      for (const w of wires) {
        expect(w.drains).toBeGreaterThan(3);
        expect(w.output.equals(want)).toBe(true);
      }
    } finally {
      await Promise.all(handles.map((h) => h.close()));
    }
  });

  it('stops without the terminator when the connection closes in the middle', async () => {
    const fh = await open(files.get('3 MiB with dots and mixed line ends')!, 'r');
    const wire = new LazyWire();
    wire.closeAfter = 600_000;
    try {
      await sendStuffedFile(codec, fh, wire);
    } finally {
      await fh.close();
    }
    const out = wire.output;
    expect(out.length).toBeLessThan(1_000_000);
    expect(out.subarray(-5).toString('latin1')).not.toBe('\r\n.\r\n');
  });

  it('throws the read error (the caller drops the client), after nothing that looks like an end', async () => {
    const fh = await open(dir, 'r'); // a directory: read() fails with EISDIR
    const wire = new LazyWire();
    try {
      await expect(sendStuffedFile(codec, fh, wire)).rejects.toMatchObject({ code: 'EISDIR' });
    } finally {
      await fh.close();
    }
    expect(wire.output.length).toBe(0);
  });

  it('reads a file that is not in the page cache on the thread pool, not on the event loop', async () => {
    const raw = corpus.at(-1)!.raw;
    const f = path.join(dir, 'cold');
    writeFileSync(f, raw);
    const fd = openSync(f, 'r');
    fsyncSync(fd);
    closeSync(fd);
    // GNU dd's iflag=nocache asks the kernel to drop the file's cached pages (posix_fadvise DONTNEED).
    const dd = spawnSync('dd', [`if=${f}`, 'iflag=nocache', 'count=0'], { stdio: 'ignore' });
    expect(dd.status).toBe(0);
    const counting = { ...codec, nowaitMisses: 0 };
    counting.readStuffedInto = (...a: Parameters<typeof codec.readStuffedInto>) => {
      const n = codec.readStuffedInto(...a);
      if (n < 0) counting.nowaitMisses++;
      return n;
    };
    const fh = await open(f, 'r');
    const wire = new LazyWire();
    try {
      await sendStuffedFile(counting, fh, wire);
    } finally {
      await fh.close();
    }
    expect(counting.nowaitMisses).toBeGreaterThan(0);
    expect(wire.output.equals(expectedRetr(raw))).toBe(true);
  });
});

/**
 * A source that hands over its chunks in one reused buffer, as a store may:
 * the encoder must be done with a chunk before it asks for the next.
 */
async function* reusedChunks(raw: Buffer, size: number): AsyncGenerator<Buffer> {
  const buf = Buffer.alloc(size);
  for (let at = 0; at < raw.length; at += size) {
    const n = raw.copy(buf, 0, at, Math.min(at + size, raw.length));
    yield buf.subarray(0, n);
    buf.fill(0x2e); // a chunk used after this would show dots
  }
}

describe('sendStuffedStream (RETR and TOP of a message that comes as chunks)', () => {
  const encoders = [
    { name: 'native', codec: streamCodec },
    { name: 'JavaScript', codec: undefined },
  ].filter((e) => e.name === 'JavaScript' || e.codec !== undefined);

  for (const enc of encoders) {
    for (const m of corpus) {
      it(`${enc.name}: sends exactly the RETR and TOP bytes: ${m.name}`, async () => {
        for (const size of [1, 7, 4096, 256 * 1024]) {
          if (size < 4096 && m.raw.length > 100_000) continue;
          const wire = new LazyWire();
          const sent = await sendStuffedStream(reusedChunks(m.raw, size), wire, undefined, enc.codec);
          expect(wire.output.equals(expectedRetr(m.raw))).toBe(true);
          expect(sent).toBe(wire.output.length);
          for (const n of [0, 1, 5, 1_000_000]) {
            const top = new LazyWire();
            await sendStuffedStream(reusedChunks(m.raw, size), top, n, enc.codec);
            expect(top.output.equals(expectedTop(m.raw, n))).toBe(true);
          }
        }
      });
    }

    it(`${enc.name}: reuses no output buffer before the socket is done with it, with several messages in flight at once`, async () => {
      const raw = corpus.at(-1)!.raw;
      const wires = Array.from({ length: 4 }, () => new LazyWire());
      await Promise.all(wires.map((w, i) => sendStuffedStream(reusedChunks(raw, 200_000 + i * 50_000), w, i === 3 ? 30_000 : undefined, enc.codec)));
      for (const [i, w] of wires.entries()) {
        expect(w.drains).toBeGreaterThan(i === 3 ? 0 : 3);
        expect(w.output.equals(i === 3 ? expectedTop(raw, 30_000) : expectedRetr(raw))).toBe(true);
      }
    });

    it(`${enc.name}: stops without the terminator when the connection closes, and passes a source's error on`, async () => {
      const raw = corpus.at(-1)!.raw;
      const wire = new LazyWire();
      wire.closeAfter = 600_000;
      await sendStuffedStream(reusedChunks(raw, 65_536), wire, undefined, enc.codec);
      expect(wire.output.length).toBeLessThan(1_000_000);
      expect(wire.output.subarray(-5).toString('latin1')).not.toBe('\r\n.\r\n');

      async function* failing(): AsyncGenerator<Buffer> {
        yield raw.subarray(0, 100_000);
        throw new Error('the database went away');
      }
      const cut = new LazyWire();
      await expect(sendStuffedStream(failing(), cut, undefined, enc.codec)).rejects.toThrow('the database went away');
      expect(cut.output.subarray(-3).toString('latin1')).not.toBe('.\r\n');
    });
  }
});
