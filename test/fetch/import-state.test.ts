/**
 * `poplar fetch import-state`: the state files of fetchmail, mpop and
 * getmail6, written by the real tools fetching (and keeping) part of a real
 * Dovecot maildrop, are imported into the ledger of a Poplar account for the
 * same mailbox; `poplar fetch` then delivers only the messages the other
 * tool had not fetched. And each file is hostile input: strict parsing with
 * the line named, bounded size, the account checked.
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { resolveFetchConfig, type ResolvedAccount } from '../../src/fetch/config.js';
import {
  chooseForeignAccount,
  getmailFileName,
  importState,
  ImportStateError,
  parseFetchmailIds,
  parseGetmailOldmail,
  parseMpopUidls,
  parseSource,
  readStateFile,
} from '../../src/fetch/import-state.js';
import { Ledger } from '../../src/fetch/ledger.js';
import { runPoplar } from '../helpers/cli.js';
import { startDovecot, type DovecotHandle } from '../helpers/dovecot.js';
import { lacks, peerPath } from '../helpers/peers.js';
import { run, shebangInterpreter } from '../interop/run.js';
import { fillMaildrop } from './crash-helpers.js';
import { fetchOnce, seqCounts, seqMessage } from './helpers.js';

const HERE = path.dirname(new URL(import.meta.url).pathname);
/** Messages the other tool fetched first, and messages that arrive after it. */
const OLD = 6;
const NEW = 4;

const err = (f: () => unknown): ImportStateError => {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(ImportStateError);
    return e as ImportStateError;
  }
  throw new Error('no error');
};

describe('state files are parsed strictly', () => {
  it('fetchmail: user@host UIDL lines, the user may hold an @; anything else names its line', () => {
    const accts = parseFetchmailIds('me@example.org@pop.example.org 0001\nme@example.org@pop.example.org 0002\nbob@other 77\n', 'ids');
    expect(accts).toEqual([
      { host: 'pop.example.org', user: 'me@example.org', entries: [{ uidl: '0001' }, { uidl: '0002' }] },
      { host: 'other', user: 'bob', entries: [{ uidl: '77' }] },
    ]);
    expect(err(() => parseFetchmailIds('a@h 1\na@h two words\n', 'ids')).message).toBe('ids, line 2: not a fetchmail UID line (user@host UIDL): "a@h two words"');
    expect(err(() => parseFetchmailIds(`a@h ${'x'.repeat(71)}\n`, 'ids')).message).toMatch(/^ids, line 1: not a POP3 UIDL/);
    expect(err(() => parseFetchmailIds('a@h 1\na@h 2', 'ids')).message).toMatch(/last line has no line end/);
    expect(err(() => parseFetchmailIds('a@h \x001\n', 'ids')).message).toMatch(/line 1/);
    expect(parseFetchmailIds('', 'ids')).toEqual([]);
  });

  it('mpop: comments, list heads and exactly as many UIDLs as announced', () => {
    const text = '# mpop\n#\n 2 pop.example.org me\nA1\nA2\n 0 other bob\n 1 pop.example.org you\nB1\n';
    expect(parseMpopUidls(text, 'u')).toEqual([
      { host: 'pop.example.org', user: 'me', entries: [{ uidl: 'A1' }, { uidl: 'A2' }] },
      { host: 'other', user: 'bob', entries: [] },
      { host: 'pop.example.org', user: 'you', entries: [{ uidl: 'B1' }] },
    ]);
    expect(err(() => parseMpopUidls(' 3 h u\nA\nB\n', 'u')).message).toBe('u, line 1: announces 3 UIDLs, the file ends after 2');
    expect(err(() => parseMpopUidls(' 1 h u\nA\nB\n', 'u')).message).toBe('u, line 3: expected an mpop list head (" count host user") or a # comment: "B"');
    expect(err(() => parseMpopUidls(' 1 h u\nA B\n', 'u')).message).toMatch(/^u, line 2: UIDL 1 of the list on line 1 is not a POP3 UIDL/);
    expect(err(() => parseMpopUidls(' 99999999999 h u\n', 'u')).message).toMatch(/^u, line 1: expected an mpop list head/);
  });

  it('getmail: UIDL NUL seconds; the account comes from the file name', () => {
    expect(getmailFileName('pop.example.org', 995, 'me@example.org')).toBe('oldmail-pop.example.org-995-me@example.org');
    expect(getmailFileName('::1', 110, 'a/b|<c>')).toBe('oldmail--1-110-a-b-c-');
    const owner = { host: 'h', user: 'u', port: 110 };
    expect(parseGetmailOldmail('A\x001700000000\nB\x001700000001\n', 'o', owner)).toEqual([{ ...owner, entries: [{ uidl: 'A', seenMs: 1_700_000_000_000 }, { uidl: 'B', seenMs: 1_700_000_001_000 }] }]);
    expect(err(() => parseGetmailOldmail('A\x00170000000x\n', 'o', owner)).message).toBe('o, line 1: not a getmail oldmail line (UIDL, NUL, seconds): "A\\\\0170000000x"');
    expect(err(() => parseGetmailOldmail('A\x001\nno nul here\n', 'o', owner)).message).toMatch(/^o, line 2: not a getmail oldmail line/);
    expect(err(() => parseGetmailOldmail('A\x001\r\n', 'o', owner)).message).toMatch(/^o, line 1/);
  });

  it('--from names one of the three tools and a file', () => {
    expect(parseSource('mpop:/x/uidls')).toEqual({ kind: 'mpop', file: '/x/uidls' });
    expect(parseSource('fetchmail:C:/odd:name')).toEqual({ kind: 'fetchmail', file: 'C:/odd:name' });
    expect(parseSource('fetchmail:~/.fetchids')).toEqual({ kind: 'fetchmail', file: path.join(os.homedir(), '.fetchids') });
    for (const bad of ['mpop', 'imap:/x', 'getmail:', '']) expect(err(() => parseSource(bad)).message).toMatch(/--from takes/);
  });

  it('the file must be of the account, unless forced; a file of several accounts, none of them it, cannot be forced', () => {
    const acct = { host: 'POP.example.org', port: 995, user: 'me' };
    const src = { kind: 'fetchmail' as const, file: 'ids' };
    const mine = { host: 'pop.example.org', user: 'me', entries: [{ uidl: '1' }] };
    const other = { host: 'pop.example.org', user: 'you', entries: [{ uidl: '2' }] };
    expect(chooseForeignAccount([other, mine], acct, src, false)).toBe(mine);
    expect(err(() => chooseForeignAccount([other], acct, src, false)).message).toBe("ids is fetchmail's state of you@pop.example.org, not of me@POP.example.org; --force imports it anyway");
    expect(chooseForeignAccount([other], acct, src, true)).toBe(other);
    const third = { host: 'x', user: 'y', entries: [] };
    expect(err(() => chooseForeignAccount([other, third], acct, src, true)).message).toMatch(/holds 2 accounts .* --force cannot tell which/);
    expect(err(() => chooseForeignAccount([], acct, src, true)).message).toBe('ids holds no UIDLs');
  });

  it('files are bounded, regular, and must exist', async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-import-'));
    try {
      await fs.writeFile(path.join(dir, 'big'), 'a@h 1\n'.repeat(100));
      await expect(readStateFile(path.join(dir, 'big'), 599)).rejects.toThrow(/600 octets, more than a state file can be \(599\)/);
      expect(await readStateFile(path.join(dir, 'big'), 600)).toHaveLength(600);
      await expect(readStateFile(dir)).rejects.toThrow(/is not a regular file/);
      await expect(readStateFile(path.join(dir, 'none'))).rejects.toThrow(/cannot open .*ENOENT/);
      await expect(readStateFile('/dev/zero')).rejects.toThrow(ImportStateError);
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });
});

let root: string;
let dc: DovecotHandle;
const USERS = ['fm', 'mp', 'gm'] as const;

/** A Poplar account for Dovecot's `user`, delivering into `<root>/<user>-poplar/Maildir`. */
function account(user: string, over: Record<string, unknown> = {}): ResolvedAccount {
  const dir = path.join(root, `${user}-poplar`);
  return resolveFetchConfig(
    {
      account: [{ name: user, host: '127.0.0.1', port: dc.port, tls: 'none', user, password: 'pw', sink: { type: 'maildir', path: path.join(dir, 'Maildir') }, state: path.join(dir, 'ledger'), ...over }],
    },
    root,
  ).accounts[0]!;
}

/** Messages OLD … OLD+NEW-1 arrive in `user`'s maildrop after the other tool ran. */
async function moreMail(user: string): Promise<void> {
  for (let i = OLD; i < OLD + NEW; i++) {
    await fs.writeFile(path.join(root, 'mail', user, 'new', `${1_800_000_000 + i}.M${i}P1.late`), seqMessage(i, 120).replace(/\r\n/g, '\n'), { mode: 0o644 });
  }
}

/** After import-state and a fetch: the Poplar Maildir holds exactly the messages the other tool had not fetched. */
async function expectOnlyNew(user: string, acct: ResolvedAccount): Promise<void> {
  const r = await fetchOnce(acct);
  expect(r.delivered).toBe(NEW);
  const counts = await seqCounts(path.join(root, `${user}-poplar`, 'Maildir'));
  expect([...counts.entries()].sort((a, b) => a[0] - b[0])).toEqual(Array.from({ length: NEW }, (_, k) => [OLD + k, 1]));
}

describe.skipIf(lacks('dovecot') || lacks('fetchmail') || lacks('mpop') || lacks('getmail'))('files written by the real tools, imported, then poplar fetch', () => {
  beforeAll(async () => {
    root = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-import-state-'));
    await fs.chmod(root, 0o755); // getmail delivers as nobody (see below)
    for (const u of USERS) await fillMaildrop(path.join(root, 'mail'), u, OLD);
    dc = await startDovecot({ maildirRoot: path.join(root, 'mail'), users: USERS.map((name) => ({ name, password: 'pw' })) });
  }, 60_000);
  afterAll(async () => {
    await dc?.stop();
    await fs.rm(root, { recursive: true, force: true });
  });

  it('fetchmail --keep: its .fetchids imported through the command (a dry run first), then only the new messages are fetched', async () => {
    const dir = path.join(root, 'fetchmail');
    await fs.mkdir(dir);
    const rc = path.join(dir, 'fetchmailrc');
    await fs.writeFile(
      rc,
      [`poll 127.0.0.1 port ${dc.port} protocol pop3 uidl auth password`, '  user "fm" password "pw" is "fm" here', "  sslproto ''", '  options keep', '  mda "cat >/dev/null"', ''].join('\n'),
      { mode: 0o600 },
    );
    const ids = path.join(dir, '.fetchids');
    const r = await run('fetchmail', ['-f', rc, '--nosyslog', '--nodetach', '--pidfile', path.join(dir, 'pid'), '-i', ids], { env: { ...process.env, HOME: dir } });
    expect(r.code, r.describe).toBe(0);
    expect((await fs.readFile(ids, 'latin1')).trim().split('\n')).toHaveLength(OLD);
    await moreMail('fm');

    const acct = account('fm');
    const config = path.join(root, 'fm.toml');
    await fs.writeFile(
      config,
      ['[[account]]', 'name = "fm"', 'host = "127.0.0.1"', `port = ${dc.port}`, 'tls = "none"', 'user = "fm"', 'password = "pw"', `sink = { type = "maildir", path = "${path.join(root, 'fm-poplar', 'Maildir')}" }`, `state = "${acct.state}"`, ''].join('\n'),
    );
    const dry = await runPoplar(['fetch', 'import-state', 'fm', '--config', config, '--from', `fetchmail:${ids}`, '--dry-run']);
    expect(dry.code, dry.stderr).toBe(0);
    expect(dry.stdout).toBe(`fm: would import ${OLD} UIDLs of fm@127.0.0.1 from fetchmail (${OLD} in ${ids}, 0 already in the ledger)\n`);
    await expect(fs.access(acct.state)).rejects.toThrow(); // nothing written
    const done = await runPoplar(['fetch', 'import-state', 'fm', '--config', config, '--from', `fetchmail:${ids}`]);
    expect(done.code, done.stderr).toBe(0);
    expect(done.stdout).toMatch(new RegExp(`^fm: imported ${OLD} UIDLs`));
    await expectOnlyNew('fm', acct);

    // The file of another host is refused (exit 65, the reason on stderr), and imported with --force.
    const elsewhere = path.join(dir, 'elsewhere');
    await fs.writeFile(elsewhere, (await fs.readFile(ids, 'latin1')).replace(/@127\.0\.0\.1 /g, '@pop.example.org '));
    const refused = await runPoplar(['fetch', 'import-state', 'fm', '--config', config, '--from', `fetchmail:${elsewhere}`]);
    expect(refused.code).toBe(65);
    expect(refused.stderr).toMatch(/is fetchmail's state of fm@pop\.example\.org, not of fm@127\.0\.0\.1; --force imports it anyway/);
    expect(await importState(acct, { kind: 'fetchmail', file: elsewhere }, { force: true })).toEqual({ from: 'fm@pop.example.org', inFile: OLD, known: OLD, added: 0 });
  }, 90_000);

  it('mpop keep on: its uidls_file imported, then only the new messages are fetched', async () => {
    const dir = path.join(root, 'mpop');
    await fs.mkdir(dir);
    const uidls = path.join(dir, 'uidls');
    const conf = path.join(dir, 'mpoprc');
    await fs.writeFile(
      conf,
      ['account mp', 'host 127.0.0.1', `port ${dc.port}`, 'tls off', 'auth user', 'user mp', 'passwordeval "echo pw"', 'delivery mda "cat >/dev/null"', `uidls_file ${uidls}`, 'keep on', ''].join('\n'),
      { mode: 0o600 },
    );
    const r = await run('mpop', ['-C', conf, '-q', '-a'], { env: { ...process.env, HOME: dir } });
    expect(r.code, r.describe).toBe(0);
    await moreMail('mp');
    const acct = account('mp');
    const res = await importState(acct, { kind: 'mpop', file: uidls });
    expect(res).toEqual({ from: 'mp@127.0.0.1', inFile: OLD, known: 0, added: OLD });
    await expectOnlyNew('mp', acct);
  }, 60_000);

  it('getmail6 read_all = false: its oldmail file imported (first-seen times kept), then only the new messages are fetched', async () => {
    const dir = path.join(root, 'getmail');
    const gd = path.join(dir, 'gd');
    const md = path.join(dir, 'Maildir');
    await fs.mkdir(gd, { recursive: true });
    await fs.chmod(dir, 0o755);
    for (const sub of ['', 'cur', 'new', 'tmp']) {
      await fs.mkdir(path.join(md, sub), { recursive: true });
      await fs.chmod(path.join(md, sub), 0o777);
    }
    const rc = path.join(gd, 'getmailrc');
    await fs.writeFile(
      rc,
      [
        '[retriever]',
        'type = SimplePOP3Retriever',
        'server = 127.0.0.1',
        `port = ${dc.port}`,
        'username = gm',
        'password = pw',
        '',
        '[destination]',
        'type = Maildir',
        `path = ${md}/`,
        // getmail will not deliver as root; it switches to this user for the delivery.
        ...(process.getuid?.() === 0 ? ['user = nobody'] : []),
        '',
        '[options]',
        'delete = false',
        'read_all = false',
        '',
      ].join('\n'),
      { mode: 0o600 },
    );
    const getmail = peerPath('getmail')!;
    const before = Date.now();
    const r = await run(shebangInterpreter(getmail) ?? 'python3', [path.join(HERE, '../interop/getmail_wait.py'), getmail, '--getmaildir', gd, '--rcfile', rc], { env: { ...process.env, HOME: dir } });
    expect(r.code, r.describe).toBe(0);
    const oldmail = path.join(gd, getmailFileName('127.0.0.1', dc.port, 'gm'));
    await fs.access(oldmail);
    await moreMail('gm');

    const acct = account('gm');
    // The name says whose file it is: another account's name is refused.
    const renamed = path.join(dir, 'oldmail-127.0.0.1-110-gm');
    await fs.copyFile(oldmail, renamed);
    await expect(importState(acct, { kind: 'getmail', file: renamed })).rejects.toThrow(/not of gm@127\.0\.0\.1:\d+ \(a file named oldmail-127\.0\.0\.1-\d+-gm\); --force/);
    expect(await importState(acct, { kind: 'getmail', file: oldmail }, { dryRun: true })).toEqual({ from: `gm@127.0.0.1:${dc.port}`, inFile: OLD, known: 0, added: 0 });
    const after = Date.now();
    // A clock a day ahead: the records must carry getmail's own times, not the import's.
    expect(await importState(acct, { kind: 'getmail', file: oldmail }, { now: after + 86_400_000 })).toEqual({ from: `gm@127.0.0.1:${dc.port}`, inFile: OLD, known: 0, added: OLD });
    const ledger = await Ledger.open(acct.state);
    try {
      for (const u of ledger.uidls()) {
        expect(ledger.get(u)!.firstSeen).toBeGreaterThanOrEqual(Math.floor(before / 1000) * 1000);
        expect(ledger.get(u)!.firstSeen).toBeLessThanOrEqual(after);
      }
      expect(ledger.size).toBe(OLD);
    } finally {
      await ledger.close();
    }
    await expectOnlyNew('gm', acct);
  }, 60_000);
});
