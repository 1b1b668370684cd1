/**
 * The fetcher against Poplar's own server (in process): the edge corpus
 * byte-exact in a Maildir, keep/delete modes, delete-after-N-days with an
 * injected clock, size limits, rules, XOAUTH2, interrupted deliveries (in a
 * Maildir, an mbox, across rule sinks; per-message records for an MDA).
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Authenticator } from '../../src/auth/types.js';
import { Pop3Client } from '../../src/client/index.js';
import { Ledger } from '../../src/fetch/ledger.js';
import { createSink, MaildirSink, MboxSink, type SinkSpecInput } from '../../src/fetch/sinks/index.js';
import { edgeCorpus } from '../corpus/corpus.js';
import { putMessage, startTestServer, type TestServer } from '../helpers/server.js';
import { fetchOnce, maildirMessages, mboxSeqCounts, seqCounts, seqMessage, storedForm, testAccount } from './helpers.js';

const DAY = 86_400_000;
let tmp: string;
beforeAll(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-fetch-'));
});
afterAll(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

let servers: TestServer[] = [];
afterEach(async () => {
  await Promise.all(servers.map((s) => s.stop()));
  servers = [];
});

async function server(opts: Parameters<typeof startTestServer>[0] = {}): Promise<TestServer> {
  const s = await startTestServer(opts);
  servers.push(s);
  return s;
}

async function workDir(name: string): Promise<string> {
  const d = path.join(tmp, name);
  await fs.mkdir(d, { recursive: true });
  return d;
}

async function uidlsOnServer(srv: TestServer, user = 'alice', password = 'secret'): Promise<string[]> {
  const c = await Pop3Client.connect({ host: '127.0.0.1', port: srv.port, tls: 'none' });
  await c.login(user, password);
  const u = (await c.uidl()).map((e) => e.uid);
  await c.quit();
  return u;
}

describe('fetch from Poplar', () => {
  it('delivers the edge corpus byte-exact; a rerun in keep mode delivers nothing; delete mode empties the server', async () => {
    const srv = await server();
    const corpus = edgeCorpus();
    for (const [i, m] of corpus.entries()) await putMessage(srv.maildirRoot, 'alice', `${1_600_000_000 + i}.M${i}P1.corpus`, m.raw);
    const dir = await workDir('corpus');
    const acct = testAccount(dir, { port: srv.port });

    const r1 = await fetchOnce(acct);
    expect(r1).toMatchObject({ ok: true, onServer: corpus.length, delivered: corpus.length, deleted: 0, skipped: 0 });
    const got = await maildirMessages(path.join(dir, 'Maildir'));
    const want = corpus.map((m) => storedForm(m.raw)).sort(Buffer.compare);
    expect(got.length).toBe(want.length);
    for (let i = 0; i < want.length; i++) expect(got[i]!.equals(want[i]!), `message ${i}`).toBe(true);

    const r2 = await fetchOnce(acct);
    expect(r2).toMatchObject({ ok: true, onServer: corpus.length, candidates: 0, delivered: 0 });
    expect((await maildirMessages(path.join(dir, 'Maildir'))).length).toBe(corpus.length);

    // Switching to delete mode: everything is in the ledger, so it is deleted and not delivered again.
    const r3 = await fetchOnce({ ...acct, keep: false });
    expect(r3).toMatchObject({ ok: true, delivered: 0, deleted: corpus.length });
    expect(await uidlsOnServer(srv)).toEqual([]);
    expect((await maildirMessages(path.join(dir, 'Maildir'))).length).toBe(corpus.length);
  });

  it('delete mode over TLS (implicit and STLS) leaves nothing on the server', async () => {
    const srv = await server();
    for (let i = 0; i < 50; i++) await srv.deliver('alice', seqMessage(i));
    const dir = await workDir('delete-tls');
    const r = await fetchOnce(testAccount(dir, { port: srv.tlsPort, tls: 'implicit', ca: srv.certFile, servername: 'localhost', keep: false, batch: 7 }));
    expect(r).toMatchObject({ ok: true, delivered: 50, deleted: 50 });
    expect(await uidlsOnServer(srv)).toEqual([]);
    for (let i = 50; i < 60; i++) await srv.deliver('alice', seqMessage(i));
    const r2 = await fetchOnce(testAccount(dir, { port: srv.port, tls: 'starttls', ca: srv.certFile, servername: 'localhost', keep: false }));
    expect(r2).toMatchObject({ ok: true, delivered: 10, deleted: 10 });
    const counts = await seqCounts(path.join(dir, 'Maildir'));
    expect(counts.size).toBe(60);
    expect([...counts.values()].every((n) => n === 1)).toBe(true);
  });

  it('delete_after_days deletes exactly the messages first seen long enough ago', async () => {
    const srv = await server();
    await srv.deliver('alice', seqMessage(1));
    await srv.deliver('alice', seqMessage(2));
    const dir = await workDir('days');
    const acct = testAccount(dir, { port: srv.port, delete_after_days: 5 });
    const t0 = Date.parse('2030-01-01T00:00:00Z');

    expect(await fetchOnce(acct, { now: () => t0 })).toMatchObject({ delivered: 2, deleted: 0 });
    await srv.deliver('alice', seqMessage(3));
    expect(await fetchOnce(acct, { now: () => t0 + 3 * DAY })).toMatchObject({ delivered: 1, deleted: 0 });
    expect(await fetchOnce(acct, { now: () => t0 + 5 * DAY - 1 })).toMatchObject({ delivered: 0, deleted: 0 });
    expect(await fetchOnce(acct, { now: () => t0 + 6 * DAY })).toMatchObject({ delivered: 0, deleted: 2 });
    const left = await uidlsOnServer(srv);
    expect(left.length).toBe(1);
    // The survivor is message 3, and the ledger forgot the two deleted ones.
    const ledger = await Ledger.open(acct.state, { fsync: false });
    try {
      expect([...ledger.uidls()].length).toBe(3); // pruned at the next session, not before
    } finally {
      await ledger.close();
    }
    expect(await fetchOnce(acct, { now: () => t0 + 8 * DAY })).toMatchObject({ delivered: 0, deleted: 1 });
    expect((await maildirMessages(path.join(dir, 'Maildir'))).length).toBe(3);
  });

  it('skips messages over skip_larger_than and deletes those over delete_larger_than unread', async () => {
    const srv = await server();
    await srv.deliver('alice', seqMessage(1, 100));
    await srv.deliver('alice', seqMessage(2, 5_000));
    await srv.deliver('alice', seqMessage(3, 50_000));
    const dir = await workDir('sizes');
    const acct = testAccount(dir, { port: srv.port, skip_larger_than: '1k', delete_larger_than: 20_000 });
    expect(await fetchOnce(acct)).toMatchObject({ ok: true, delivered: 1, skipped: 1, deleted: 1 });
    expect([...(await seqCounts(path.join(dir, 'Maildir'))).keys()]).toEqual([1]);
    expect((await uidlsOnServer(srv)).length).toBe(2);
    expect(await fetchOnce(acct)).toMatchObject({ ok: true, delivered: 0, skipped: 1, deleted: 0 });
  });

  for (const preview of ['top', 'retr'] as const) {
    it(`rules (headers via ${preview}): header regex → folder, → another sink, discard; size → folder`, async () => {
      const srv = await server();
      await srv.deliver('alice', seqMessage(1, 200, 'List-Id: Node.js users <node.lists.example.org>\r\n'));
      await srv.deliver('alice', seqMessage(2, 200, 'X-Spam-Flag: YES\r\n'));
      await srv.deliver('alice', seqMessage(3, 200));
      await srv.deliver('alice', seqMessage(4, 40_000));
      await srv.deliver('alice', seqMessage(5, 200, 'X-Archive:\r\n yes please\r\n'));
      const dir = await workDir(`rules-${preview}`);
      const acct = testAccount(dir, {
        port: srv.port,
        header_preview: preview,
        rule: [
          { header: 'list-id', match: '<node\\.lists\\.', folder: '.Lists.node' },
          { header: 'X-Spam-Flag', match: '^yes$', discard: true },
          { header: 'X-Archive', match: 'yes please', sink: { type: 'maildir', path: path.join(dir, 'Archive') } },
          { larger_than: 30_000, folder: 'Big' },
        ],
      });
      expect(await fetchOnce(acct)).toMatchObject({ ok: true, delivered: 4, discarded: 1 });
      const md = path.join(dir, 'Maildir');
      expect([...(await seqCounts(md)).keys()]).toEqual([3]);
      expect([...(await seqCounts(path.join(md, '.Lists.node'))).keys()]).toEqual([1]);
      expect([...(await seqCounts(path.join(md, '.Big'))).keys()]).toEqual([4]);
      expect([...(await seqCounts(path.join(dir, 'Archive'))).keys()]).toEqual([5]);
      // The discarded message stays on the server (keep mode) but is never looked at again.
      expect(await fetchOnce(acct)).toMatchObject({ ok: true, candidates: 0, delivered: 0, discarded: 0 });
      expect((await uidlsOnServer(srv)).length).toBe(5);
    });
  }

  it('logs in with XOAUTH2, the token printed by a command', async () => {
    const authenticator: Authenticator = {
      authenticate: async (c) => (c.kind === 'bearer' && c.username === 'alice' && c.token === 'tok-123' ? { username: 'alice' } : null),
    };
    const srv = await server({ authenticator, oauth: true });
    await srv.deliver('alice', seqMessage(1));
    const dir = await workDir('xoauth2');
    const base = { port: srv.port, password: undefined };
    const bad = testAccount(dir, { ...base, oauth2: { token_command: 'echo wrong', mechanism: 'XOAUTH2' } });
    await expect(fetchOnce(bad)).rejects.toMatchObject({ name: 'Pop3ServerError', command: 'AUTH' });
    const acct = testAccount(dir, { ...base, oauth2: { token_command: 'printf "tok-123\\nignored\\n"', mechanism: 'XOAUTH2' } });
    expect(await fetchOnce(acct)).toMatchObject({ ok: true, delivered: 1 });
  });

  it('settles deliveries an interrupted run left pending: found ones are recorded, missing ones fetched', async () => {
    const srv = await server();
    for (let i = 1; i <= 6; i++) await srv.deliver('alice', seqMessage(i));
    const dir = await workDir('pending');
    const acct = testAccount(dir, { port: srv.port });
    const uidls = await uidlsOnServer(srv);
    // A run that wrote intents for 1-4, delivered 1-3 into the Maildir, and died before recording them.
    const ledger = await Ledger.open(acct.state, { fsync: false });
    await ledger.intend(uidls.slice(0, 4).map((uidl) => ({ uidl, target: '-' })));
    await ledger.close();
    const sink = new MaildirSink({ path: path.join(dir, 'Maildir'), fsync: false });
    const c = await Pop3Client.connect({ host: '127.0.0.1', port: srv.port, tls: 'none' });
    await c.login('alice', 'secret');
    for (let n = 1; n <= 3; n++) await sink.deliver(await c.retr(n), { account: 'test', uidl: uidls[n - 1]!, size: 0 });
    await c.quit();
    await sink.close();

    const r = await fetchOnce(acct);
    expect(r).toMatchObject({ ok: true, recovered: 3, delivered: 3 });
    const counts = await seqCounts(path.join(dir, 'Maildir'));
    expect([...counts.entries()].sort((a, b) => a[0] - b[0])).toEqual([1, 2, 3, 4, 5, 6].map((i) => [i, 1]));
  });

  it('settles pending deliveries into an mbox: whole ones are recorded, a torn one is cut off and fetched again', async () => {
    const srv = await server();
    for (let i = 1; i <= 6; i++) await srv.deliver('alice', seqMessage(i));
    const dir = await workDir('pending-mbox');
    const file = path.join(dir, 'inbox.mbox');
    const acct = testAccount(dir, { port: srv.port, sink: { type: 'mbox', path: file } });
    const uidls = await uidlsOnServer(srv);
    // A run that wrote intents for 1-4, appended 1 and 2, was killed while appending 3, and never recorded any.
    const ledger = await Ledger.open(acct.state, { fsync: false });
    await ledger.intend(uidls.slice(0, 4).map((uidl) => ({ uidl, target: '-' })));
    await ledger.close();
    const sink = new MboxSink({ path: file, fsync: false });
    const c = await Pop3Client.connect({ host: '127.0.0.1', port: srv.port, tls: 'none' });
    await c.login('alice', 'secret');
    for (let n = 1; n <= 3; n++) await sink.deliver(await c.retr(n), { account: 'test', uidl: uidls[n - 1]!, size: 0 });
    await c.quit();
    await sink.close();
    await fs.truncate(file, (await fs.stat(file)).size - 60);

    const r = await fetchOnce(acct);
    expect(r).toMatchObject({ ok: true, recovered: 2, delivered: 4 });
    const counts = await mboxSeqCounts(file, (i) => seqMessage(i));
    expect([...counts.entries()].sort((a, b) => a[0] - b[0])).toEqual([1, 2, 3, 4, 5, 6].map((i) => [i, 1]));
  });

  it('asks every sink a message decided while reading it may have gone to, and the rule sink an intent names', async () => {
    const srv = await server();
    for (let i = 1; i <= 5; i++) await srv.deliver('alice', seqMessage(i, 200, i % 2 === 1 ? 'X-Archive: yes\r\n' : ''));
    const dir = await workDir('pending-rules');
    const file = path.join(dir, 'archive.mbox');
    const acct = testAccount(dir, { port: srv.port, header_preview: 'retr', rule: [{ header: 'X-Archive', match: 'yes', sink: { type: 'mbox', path: file } }] });
    const uidls = await uidlsOnServer(srv);
    // Pending: 1 (`*`) reached the rule's mbox, 2 (`*`) the Maildir, 3 (the rule's sink) the mbox; 4 (`-`) nothing.
    const ledger = await Ledger.open(acct.state, { fsync: false });
    await ledger.intend([
      { uidl: uidls[0]!, target: '*' },
      { uidl: uidls[1]!, target: '*' },
      { uidl: uidls[2]!, target: 'rule:1' },
      { uidl: uidls[3]!, target: '-' },
    ]);
    await ledger.close();
    const mbox = new MboxSink({ path: file, fsync: false });
    const maildir = new MaildirSink({ path: path.join(dir, 'Maildir'), fsync: false });
    const c = await Pop3Client.connect({ host: '127.0.0.1', port: srv.port, tls: 'none' });
    await c.login('alice', 'secret');
    await mbox.deliver(await c.retr(1), { account: 'test', uidl: uidls[0]!, size: 0 });
    await maildir.deliver(await c.retr(2), { account: 'test', uidl: uidls[1]!, size: 0 });
    await mbox.deliver(await c.retr(3), { account: 'test', uidl: uidls[2]!, size: 0 });
    await c.quit();

    expect(await fetchOnce(acct)).toMatchObject({ ok: true, recovered: 3, delivered: 2 });
    const archived = await mboxSeqCounts(file, (i) => seqMessage(i, 200, 'X-Archive: yes\r\n'));
    expect([...archived.entries()].sort((a, b) => a[0] - b[0])).toEqual([1, 3, 5].map((i) => [i, 1]));
    expect([...(await seqCounts(path.join(dir, 'Maildir'))).entries()].sort((a, b) => a[0] - b[0])).toEqual([2, 4].map((i) => [i, 1]));
  });

  it('records each delivery to an MDA before the next one reaches it (a sink that cannot be asked after a crash)', async () => {
    const srv = await server();
    for (let i = 1; i <= 8; i++) await srv.deliver('alice', seqMessage(i));
    const dir = await workDir('mda-records');
    const out = path.join(dir, 'records-seen');
    const command = 'cat > /dev/null; { grep -c "^+ " "$LEDGER" || true; } >> "$OUT"';
    const acct = testAccount(dir, { port: srv.port, batch: 64, sink: { type: 'mda', command, env: { LEDGER: path.join(dir, 'test.ledger'), OUT: out } } });
    expect(acct.state).toBe(path.join(dir, 'test.ledger'));
    // (The test deps turn fsync off in each sink spec, which an MDA spec does not have.)
    const r = await fetchOnce(acct, { createSink: (spec) => createSink(spec as SinkSpecInput) });
    expect(r).toMatchObject({ ok: true, delivered: 8 });
    // The n-th MDA run finds the n-1 deliveries before it already in the ledger.
    expect((await fs.readFile(out, 'utf8')).trim().split('\n').map(Number)).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    expect(await fetchOnce(acct, { createSink: (spec) => createSink(spec as SinkSpecInput) })).toMatchObject({ ok: true, candidates: 0, delivered: 0 });
  });

  it('a stop request finishes the current message, commits and QUITs; the next run brings the rest', async () => {
    const srv = await server();
    for (let i = 0; i < 40; i++) await srv.deliver('alice', seqMessage(i));
    const dir = await workDir('stop');
    // parallel = 1: exactly the message being delivered is finished (with parallel deliveries, those already read are too).
    const acct = testAccount(dir, { port: srv.port, keep: false, batch: 4, parallel: 1 });
    const stop = new AbortController();
    let seen = 0;
    const r = await fetchOnce(acct, {
      stop: stop.signal,
      progress: { messageDone: () => void (++seen === 10 && stop.abort()) },
    });
    // The stop lands while message 10 is being finished; messages already read before it may
    // complete too (at most the rest of the group). What matters: stopped early, nothing lost.
    expect(r).toMatchObject({ ok: true, stopped: true });
    const first = (r as { delivered: number }).delivered;
    expect(first).toBeGreaterThanOrEqual(10);
    expect(first).toBeLessThanOrEqual(14);
    expect(r).toMatchObject({ deleted: first });
    expect((await uidlsOnServer(srv)).length).toBe(40 - first);
    expect(await fetchOnce(acct)).toMatchObject({ ok: true, delivered: 40 - first, deleted: 40 - first });
    const counts = await seqCounts(path.join(dir, 'Maildir'));
    expect(counts.size).toBe(40);
    expect([...counts.values()].every((n) => n === 1)).toBe(true);
  });
});
