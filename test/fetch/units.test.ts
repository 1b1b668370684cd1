/** Ledger, rules, config, OAuth refresh and daemon timing: the parts that need no POP3 server. */
import { promises as fs } from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { ConfigError } from '../../src/config/load.js';
import { accountFromFlags, resolveFetchConfig } from '../../src/fetch/config.js';
import { CredentialError, TokenSource } from '../../src/fetch/credentials.js';
import { classify } from '../../src/fetch/exit-status.js';
import { Ledger, LedgerBusyError } from '../../src/fetch/ledger.js';
import { chooseDestination, compileRules, parseHeaders } from '../../src/fetch/rules.js';
import { nextDelayMs } from '../../src/fetch/scheduler.js';

let tmp: string;
beforeAll(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-fetch-unit-'));
});
afterAll(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

describe('ledger', () => {
  it('records survive a reopen; first-seen times are kept; intents without records are pending', async () => {
    const file = path.join(tmp, 'l1', 'a.ledger');
    const l = await Ledger.open(file);
    await l.intend([{ uidl: 'u1', target: '-' }, { uidl: 'u2', target: 'folder:.x' }], 1000);
    await l.record([{ uidl: 'u1' }, { uidl: 'u3', discarded: true }], 5000);
    await l.sync();
    await l.record([{ uidl: 'u1' }], 9000);
    await l.close();
    const r = await Ledger.open(file);
    expect(r.get('u1')).toEqual({ firstSeen: 5000, discarded: false });
    expect(r.get('u3')).toEqual({ firstSeen: 5000, discarded: true });
    expect(r.pending()).toEqual([{ uidl: 'u2', since: 1000, target: 'folder:.x' }]);
    await r.close();
  });

  it('compaction never writes through a link planted at its temporary name', async () => {
    const dir = path.join(tmp, 'l-link');
    await fs.mkdir(dir);
    const file = path.join(dir, 'a.ledger');
    const victim = path.join(tmp, 'l-link-victim.txt');
    await fs.writeFile(victim, 'precious\n');
    await fs.symlink(victim, `${file}.tmp${process.pid}`);
    const l = await Ledger.open(file);
    await l.record([{ uidl: 'u1' }, { uidl: 'u2' }], 1000);
    await l.retainOnly(new Set(['u2'])); // drops u1: the journal is compacted
    await l.close();
    expect(await fs.readFile(victim, 'utf8')).toBe('precious\n');
    expect((await fs.lstat(file)).isFile()).toBe(true);
    const r = await Ledger.open(file);
    expect(r.get('u1')).toBeUndefined();
    expect(r.get('u2')).toEqual({ firstSeen: 1000, discarded: false });
    await r.close();
    expect((await fs.readdir(dir)).filter((f) => f.includes('.tmp'))).toEqual([]);
  });

  it('a record appended while an fdatasync is under way gets an fdatasync of its own', async () => {
    // intend() (next window) and record() (last batch) run at the same time in a fetch.
    const probe = await fs.open(path.join(tmp, 'probe'), 'w');
    const proto = Object.getPrototypeOf(probe) as { datasync: () => Promise<void> };
    await probe.close();
    const real = proto.datasync;
    let release: () => void = () => undefined;
    const gate = new Promise<void>((r) => (release = r));
    let calls = 0;
    const spy = vi.spyOn(proto, 'datasync').mockImplementation(async function (this: unknown) {
      calls++;
      if (calls === 1) await gate; // the intents' fdatasync is slow
      return real.call(this);
    });
    try {
      const l = await Ledger.open(path.join(tmp, 'l-race.ledger'));
      const intents = l.intend([{ uidl: 'u9', target: '-' }]);
      await vi.waitFor(() => expect(calls).toBe(1));
      await l.record([{ uidl: 'u1' }], 1000); // written while that fdatasync runs
      release();
      await intents;
      await l.sync(); // must not count the record as covered by the earlier fdatasync
      expect(calls).toBe(2);
      await l.close();
    } finally {
      spy.mockRestore();
    }
  });

  it('drops a torn last line, and rewrites the file so appends start on a fresh line', async () => {
    const file = path.join(tmp, 'l2.ledger');
    await fs.writeFile(file, 'poplar-ledger 1\n+ 1 d aaa\n+ 2 d bb');
    const l = await Ledger.open(file);
    expect([...l.uidls()]).toEqual(['aaa']);
    await l.record([{ uidl: 'ccc' }], 3);
    await l.close();
    expect(await fs.readFile(file, 'utf8')).toBe('poplar-ledger 1\n+ 1 d aaa\n+ 3 d ccc\n');
  });

  it('retainOnly forgets what the server no longer lists, atomically', async () => {
    const file = path.join(tmp, 'l3.ledger');
    const l = await Ledger.open(file);
    await l.record(['a', 'b', 'c'].map((uidl) => ({ uidl })), 1);
    expect(await l.retainOnly(new Set(['b', 'zzz']))).toBe(2);
    await l.record([{ uidl: 'd' }], 2);
    await l.close();
    expect(await fs.readFile(file, 'utf8')).toBe('poplar-ledger 1\n+ 1 d b\n+ 2 d d\n');
    expect((await fs.readdir(tmp)).filter((f) => f.includes('.tmp'))).toEqual([]);
  });

  it('refuses a second user while locked; a dead holder’s lock is taken over', async () => {
    const file = path.join(tmp, 'l4.ledger');
    const l = await Ledger.open(file);
    await fs.writeFile(`${file}.lock`, String(process.ppid)); // a live process that is not us
    await expect(Ledger.open(file)).rejects.toBeInstanceOf(LedgerBusyError);
    await fs.writeFile(`${file}.lock`, '2147483646'); // no such process
    const again = await Ledger.open(file);
    await again.close();
    await l.close().catch(() => undefined);
  });

  it('rejects a file that is not a ledger', async () => {
    const file = path.join(tmp, 'l5.ledger');
    await fs.writeFile(file, 'something else\n');
    await expect(Ledger.open(file)).rejects.toThrow(/not a poplar ledger/);
    expect(classify(await Ledger.open(file).catch((e: unknown) => e)).exitCode).toBe(74);
  });
});

describe('rules', () => {
  const head = Buffer.from('From: a@example.org\r\nList-Id: Node users\r\n <node.lists.example>\r\nSubject: =?UTF-8?Q?x?=\r\nX-Tag: Grüße\r\n\r\nbody: not a header\r\n', 'utf8');
  it('parses and unfolds header fields', () => {
    const h = parseHeaders(head);
    expect(h.get('list-id')).toEqual(['Node users <node.lists.example>']);
    expect(h.has('body')).toBe(false);
  });
  it('first matching rule wins; size and header conditions combine', () => {
    const acct = resolveFetchConfig(
      {
        account: [
          {
            name: 'r',
            host: 'h',
            user: 'u',
            password: 'p',
            sink: { type: 'maildir', path: '/m' },
            rule: [
              { header: 'X-Tag', match: '^grüße$', folder: 'Greetings', larger_than: 1000 },
              { header: 'list-id', match: '<node\\.lists\\.', folder: '.Lists.node' },
              { smaller_than: 10, discard: true },
            ],
          },
        ],
      },
      '/',
    ).accounts[0]!;
    const rules = compileRules(acct.rule);
    const h = parseHeaders(head);
    expect(chooseDestination(rules, 2000, h)).toEqual({ kind: 'folder', folder: 'Greetings' });
    expect(chooseDestination(rules, 500, h)).toEqual({ kind: 'folder', folder: '.Lists.node' });
    expect(chooseDestination(rules, 5, new Map())).toEqual({ kind: 'discard' });
    expect(chooseDestination(rules, 500, new Map())).toEqual({ kind: 'default' });
  });
});

describe('config', () => {
  const base = { name: 'a', host: 'h', user: 'u', password: 'p', sink: { type: 'maildir', path: 'm' } };
  it('fills defaults and resolves paths against the config directory', () => {
    const c = resolveFetchConfig({ fetch: { state_dir: 'st' }, account: [base] }, '/etc/poplar');
    expect(c.accounts[0]).toMatchObject({ port: 995, tls: 'implicit', keep: true, fetch: 'new', batch: 64, state: '/etc/poplar/st/a.ledger', sink: { type: 'maildir', path: '/etc/poplar/m' } });
  });
  it('reports mistakes as ConfigError', () => {
    const bad = (o: Record<string, unknown>, re: RegExp): void => {
      expect(() => resolveFetchConfig({ account: [{ ...base, ...o }] }, '/')).toThrow(re);
    };
    bad({ password_env: 'X' }, /exactly one of password/);
    bad({ sink: { type: 'maildir' } }, /sink.path/);
    bad({ sink: 'nowhere' }, /unknown sink "nowhere"/);
    bad({ rule: [{ header: 'x', match: '(', folder: 'f' }] }, /match:/);
    bad({ keep: false, delete_after_days: 3 }, /delete_after_days needs keep/);
    bad({ skip_larger_than: 'ten' }, /skip_larger_than/);
    bad({ unknown_key: 1 }, /unknown setting/);
    expect(resolveFetchConfig({ account: [{ ...base, skip_larger_than: '1.5M' }] }, '/').accounts[0]!.skip_larger_than).toBe(1572864);
    expect(() => accountFromFlags({ host: 'h', user: 'u', passwordEnv: 'X', maildir: 'm' })).toThrow(ConfigError);
  });
});

describe('OAuth 2.0 refresh-token flow', () => {
  let endpoint: string;
  let srv: http.Server;
  const requests: URLSearchParams[] = [];
  let nextStatus = 200;
  beforeAll(async () => {
    srv = http.createServer((req, res) => {
      let body = '';
      req.on('data', (d: Buffer) => (body += d.toString()));
      req.on('end', () => {
        const p = new URLSearchParams(body);
        requests.push(p);
        res.setHeader('content-type', 'application/json');
        if (nextStatus !== 200 || p.get('refresh_token') === 'revoked') {
          res.statusCode = nextStatus !== 200 ? nextStatus : 400;
          res.end(JSON.stringify({ error: 'invalid_grant' }));
          return;
        }
        res.end(JSON.stringify({ access_token: `at-${requests.length}`, token_type: 'Bearer', expires_in: 3600, ...(requests.length === 2 ? { refresh_token: 'rotated' } : {}) }));
      });
    });
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
    endpoint = `http://127.0.0.1:${(srv.address() as { port: number }).port}/token`;
  });
  afterAll(() => new Promise<void>((r) => srv.close(() => r())));

  it('POSTs grant_type=refresh_token, caches the token until shortly before expiry, keeps a rotated refresh token', async () => {
    let now = 1_000_000;
    const cacheFile = path.join(tmp, 'oauth', 'acct.token');
    const settings = { token_endpoint: endpoint, client_id: 'cid', client_secret_env: 'SECRET', refresh_token: 'rt-0', scope: 'pop' };
    const ts = new TokenSource(settings, { cacheFile, env: { SECRET: 'shh' }, now: () => now });
    expect(await ts.get()).toEqual({ token: 'at-1', cached: false });
    expect(Object.fromEntries(requests[0]!)).toEqual({ grant_type: 'refresh_token', refresh_token: 'rt-0', client_id: 'cid', client_secret: 'shh', scope: 'pop' });
    now += 3000_000;
    expect(await ts.get()).toEqual({ token: 'at-1', cached: true });
    // A new process finds the cached token on disk (mode 0600).
    const ts2 = new TokenSource(settings, { cacheFile, env: { SECRET: 'shh' }, now: () => now });
    expect(await ts2.get()).toEqual({ token: 'at-1', cached: true });
    expect((await fs.stat(cacheFile)).mode & 0o777).toBe(0o600);
    expect(requests.length).toBe(1);
    now += 600_000; // within the last minute before expiry: refresh
    expect(await ts2.get()).toEqual({ token: 'at-2', cached: false });
    expect(await ts2.get(undefined, true)).toEqual({ token: 'at-3', cached: false });
    expect(requests[2]!.get('refresh_token')).toBe('rotated');
  });

  it('a refused refresh is a permanent credential error (exit 78); a 5xx is temporary (75)', async () => {
    const ts = new TokenSource({ token_endpoint: endpoint, client_id: 'cid', refresh_token: 'revoked' }, { env: {} });
    const e = await ts.get().catch((x: unknown) => x);
    expect(e).toBeInstanceOf(CredentialError);
    expect((e as Error).message).toMatch(/invalid_grant/);
    expect(classify(e).exitCode).toBe(78);
    nextStatus = 503;
    const t = await new TokenSource({ token_endpoint: endpoint, client_id: 'cid', refresh_token: 'x' }, { env: {} }).get().catch((x: unknown) => x);
    nextStatus = 200;
    expect(classify(t).exitCode).toBe(75);
  });

  it('a token command: first line of its output, every time', async () => {
    const ts = new TokenSource({ token_command: 'printf "tok\\nsecond line"' });
    expect(await ts.get()).toEqual({ token: 'tok', cached: false });
    const failing = new TokenSource({ token_command: 'echo oops >&2; exit 3' });
    await expect(failing.get()).rejects.toThrow(/exited with 3: oops/);
  });
});

describe('daemon timing', () => {
  const f = { interval: 300, jitter: 0.1, backoff_initial: 30, backoff_max: 3600, max_concurrent: 4, state_dir: '/' };
  it('interval ± jitter; exponential backoff after errors, capped', () => {
    expect(nextDelayMs(f, 0, () => 0)).toBe(270_000);
    expect(nextDelayMs(f, 0, () => 1)).toBe(330_000);
    expect(nextDelayMs(f, 1, () => 0.5)).toBe(30_000);
    expect(nextDelayMs(f, 3, () => 0.5)).toBe(120_000);
    expect(nextDelayMs(f, 20, () => 0.5)).toBe(3_600_000);
  });
});
