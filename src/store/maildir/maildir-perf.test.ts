/**
 * STAT/LIST/UIDL on 100 000 messages read no message file after the first
 * login (docs/architecture.md, "Maildir store"). 100 000 small files without `,W=` in their names: the first
 * open measures every file and writes the sizes back to dovecot-uidlist as W;
 * the second open (and STAT/LIST/UIDL over the wire) must not open any
 * message file. Proven three ways: every fs entry point that opens a file is
 * counted, 100 files are overwritten with different lengths (LIST must not
 * change), and dovecot-uidlist is left untouched.
 */
import { describe, it, expect } from 'vitest';
import fsCjs, { mkdirSync, writeFileSync, promises as fs } from 'node:fs';
import { syncBuiltinESMExports } from 'node:module';
import path from 'node:path';
import { startTestServer } from '../../../test/helpers/server.js';
import { Wire } from '../../../test/helpers/wire.js';
import { crlfSize } from '../../protocol/message-size.js';
import { extValue, parseUidlist } from './uidlist.js';

// 100 000 by default; POPLAR_PERF_MESSAGES=5000 makes a quick local run.
const N = Number(process.env['POPLAR_PERF_MESSAGES'] ?? 100_000);
const IN_NEW = Math.floor(N / 10); // these also take the new/ -> cur/ rename on the first open

function body(i: number): Buffer {
  return Buffer.from(`Subject: m${i}\nMessage-ID: <${i}@perf>\n\n${'x'.repeat(i % 50)}\nend ${i}\n`, 'latin1');
}

type Patchable = Record<string, (...args: unknown[]) => unknown>;

/**
 * Counts every call that opens a file below one of `dirs` through node:fs (callback,
 * sync, promise and stream APIs). Named ESM imports of node:fs see the patched
 * functions thanks to syncBuiltinESMExports().
 */
function countOpensUnder(dirs: string[]): { calls: string[]; restore(): void } {
  const calls: string[] = [];
  const restore: (() => void)[] = [];
  const patch = (obj: Patchable, names: string[], label: string): void => {
    for (const name of names) {
      const orig = obj[name]!;
      obj[name] = function (this: unknown, ...args: unknown[]) {
        const p = args[0];
        if (typeof p === 'string' && dirs.some((d) => p.startsWith(d))) calls.push(`${label}${name} ${p}`);
        return orig.apply(this, args);
      };
      restore.push(() => (obj[name] = orig));
    }
  };
  patch(fsCjs as unknown as Patchable, ['open', 'openSync', 'readFile', 'readFileSync', 'createReadStream'], 'fs.');
  patch(fsCjs.promises as unknown as Patchable, ['open', 'readFile'], 'fs.promises.');
  syncBuiltinESMExports();
  return {
    calls,
    restore: () => {
      for (const r of restore) r();
      syncBuiltinESMExports();
    },
  };
}

describe('MaildirStore with 100 000 messages', () => {
  it('reads no message file for STAT/LIST/UIDL after the first login', async () => {
    const srv = await startTestServer();
    try {
      const box = path.join(srv.maildirRoot, 'alice');
      for (const sub of ['cur', 'new', 'tmp']) mkdirSync(path.join(box, sub), { recursive: true });
      let t = performance.now();
      let totalSize = 0;
      for (let i = 0; i < N; i++) {
        const raw = body(i);
        totalSize += crlfSize(raw);
        const base = `${1700000000 + i}.M${i % 1000}P${i}.perfhost`;
        if (i < IN_NEW) writeFileSync(path.join(box, 'new', base), raw);
        else writeFileSync(path.join(box, 'cur', `${base}:2,S`), raw);
      }
      console.log(`created ${N} files in ${Math.round(performance.now() - t)} ms`);

      // First login: everything gets measured and a UID.
      t = performance.now();
      const first = await srv.store.open({ username: 'alice' });
      const firstMs = performance.now() - t;
      const sizes = first.messages.map((m) => m.size);
      const uidls = first.messages.map((m) => m.uidl);
      await first.release();
      console.log(`first open (measure ${N} files, write uidlist): ${Math.round(firstMs)} ms`);
      expect(sizes).toHaveLength(N);
      expect(sizes.reduce((a, b) => a + b, 0)).toBe(totalSize);
      expect(sizes[7]).toBe(crlfSize(body(7)));
      expect(sizes[N - 1]).toBe(crlfSize(body(N - 1)));

      // Every record carries W, so nothing has to be measured again.
      const uidlistPath = path.join(box, 'dovecot-uidlist');
      const uidlistText = await fs.readFile(uidlistPath, 'utf8');
      const uidlistStat = await fs.stat(uidlistPath);
      const list = parseUidlist(uidlistText);
      expect(list.records).toHaveLength(N);
      expect(list.records.filter((r) => extValue(r, 'W') === undefined)).toEqual([]);
      expect(list.records.map((r) => Number(extValue(r, 'W')))).toEqual(sizes);

      // Make the files lie: if any size were read from a file, LIST would change.
      const cur = (await fs.readdir(path.join(box, 'cur'))).sort();
      for (let k = 0; k < 100; k++) writeFileSync(path.join(box, 'cur', cur[Math.floor((k * cur.length) / 100)]!), 'changed\n'.repeat(k + 3));

      // Second login through the server: STAT, LIST, UIDL.
      // A session opens message files through its open cur/ directory (/proc/self/fd/N/name).
      const counter = countOpensUnder([...['cur', 'new'].map((sub) => path.join(box, sub) + path.sep), '/proc/self/fd/']);
      let secondMs: number;
      let stat: string;
      let listLines: string[];
      let uidlLines: string[];
      const w = await Wire.connect(srv.port);
      try {
        await w.line();
        t = performance.now();
        await w.login('alice', 'secret');
        secondMs = performance.now() - t;
        stat = await w.cmd('STAT');
        listLines = (await w.cmdLines('LIST')).lines;
        uidlLines = (await w.cmdLines('UIDL')).lines;
        const opensDuringSession = counter.calls.length;
        // Sanity check of the counter itself: RETR does open a message file.
        expect((await w.cmdMulti('RETR 1')).status).toMatch(/^\+OK/);
        expect(counter.calls.slice(opensDuringSession)).toEqual([expect.stringMatching(/^fs\.promises\.open \/proc\/self\/fd\/\d+\/1700000000\.M0P0\.perfhost:2,S?$/)]);
        expect(counter.calls.slice(0, opensDuringSession)).toEqual([]);
        expect(await w.cmd('QUIT')).toMatch(/^\+OK/);
        await w.closed();
      } finally {
        counter.restore();
        w.close();
      }
      console.log(`second login (no message file read): ${Math.round(secondMs)} ms`);
      console.log(`message-file opens during login+STAT+LIST+UIDL: ${counter.calls.length - 1} (RETR 1 made the only one)`);

      expect(stat).toBe(`+OK ${N} ${totalSize}`);
      expect(listLines).toHaveLength(N);
      expect(listLines.map((l) => Number(l.split(' ')[1]))).toEqual(sizes);
      expect(uidlLines.map((l) => l.split(' ')[1])).toEqual(uidls);
      // Nothing was rewritten either.
      expect(await fs.readFile(uidlistPath, 'utf8')).toBe(uidlistText);
      expect((await fs.stat(uidlistPath)).mtimeMs).toBe(uidlistStat.mtimeMs);
    } finally {
      await srv.stop();
    }
  }, 600_000);
});
