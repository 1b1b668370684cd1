/**
 * The parts of a migration on their own: endpoints as written on the
 * command line, the Maildir target's names and uidlist records, a source's
 * messages checked before anything is stored.
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError } from '../../src/config/errors.js';
import { describeEndpoint, parseEndpoint } from '../../src/migrate/endpoints.js';
import { withoutAddedLineEnd } from '../../src/migrate/pop3-source.js';
import { checkMessages } from '../../src/migrate/run.js';
import { silentLogger } from '../../src/observability/log.js';
import { MaildirMigration, migratedUidl } from '../../src/store/maildir/migration.js';

let tmp: string;
beforeAll(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-migrate-units-'));
});
afterAll(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

describe('endpoints', () => {
  it('reads maildir:, postgres, postgres:URL, pop3:// and pop3s://', () => {
    expect(parseEndpoint('maildir:/var/mail', '--from')).toEqual({ kind: 'maildir', root: '/var/mail' });
    expect(parseEndpoint('postgres', '--to')).toEqual({ kind: 'postgres' });
    expect(parseEndpoint('postgres:postgres://db/mail', '--to')).toEqual({ kind: 'postgres', url: 'postgres://db/mail' });
    expect(parseEndpoint('pop3://alice%40example.org@mail.example.org', '--from')).toMatchObject({ kind: 'pop3', user: 'alice@example.org', host: 'mail.example.org', port: 110, tls: 'starttls' });
    expect(parseEndpoint('pop3s://bob@[::1]:9995', '--from')).toMatchObject({ kind: 'pop3', user: 'bob', host: '::1', port: 9995, tls: 'implicit' });
  });

  it('refuses passwords in URLs, POP3 targets, paths after the host and unknown schemes', () => {
    expect(() => parseEndpoint('pop3://a:pw@h', '--from')).toThrow(ConfigError);
    expect(() => parseEndpoint('pop3://a@h', '--to')).toThrow(/cannot be a POP3 server/);
    expect(() => parseEndpoint('pop3://a@h/INBOX', '--from')).toThrow(/nothing after it/);
    expect(() => parseEndpoint('pop3://h', '--from')).toThrow(/login name/);
    expect(() => parseEndpoint('imap://a@h', '--from')).toThrow(ConfigError);
    expect(() => parseEndpoint('maildir:', '--from')).toThrow(ConfigError);
  });

  it('never shows a database password', () => {
    expect(describeEndpoint(parseEndpoint('postgres:postgres://u:hunter2@db/mail', '--to'))).not.toContain('hunter2');
  });
});

describe('checks before storing', () => {
  it('leaves out invalid, duplicate and oversized messages with a reason each', () => {
    const reasons: string[] = [];
    const m = (uidl: string, size = 10) => ({ uidl, size, arrived: new Date(), firstRetrieved: null });
    const ok = checkMessages([m('a'), m('b c'), m('d'), m('d'), m('y'.repeat(71)), m('e', 1e9), m('f', -1), m('g')], 1e6, (w) => reasons.push(w));
    expect(ok).toEqual([0, 7]);
    expect(reasons).toHaveLength(6);
  });

  it('drops only the CRLF a server added after a message without a final line end', () => {
    expect(withoutAddedLineEnd(Buffer.from('a\r\nlast\r\n'), 7).toString()).toBe('a\r\nlast');
    expect(withoutAddedLineEnd(Buffer.from('a\r\nlast\r\n'), 9).toString()).toBe('a\r\nlast\r\n');
  });
});

describe('the Maildir target', () => {
  const store = () => new MaildirMigration({ root: path.join(tmp, 'mail'), logger: silentLogger(), fsync: false });
  const msg = (uidl: string, seen = false) => ({ uidl, size: 0, arrived: new Date('2020-01-01T00:00:00Z'), firstRetrieved: seen ? new Date() : null });

  it('names carry the UIDL (any printable one, / and : included) and sort in the order added', async () => {
    const t = await store().openTarget('erin');
    const odd = 'a/b:c..\\~';
    expect(await t.add(msg(odd, true), Buffer.from('x\n'))).toBe('added');
    expect(await t.add(msg('second'), Buffer.from('y\n'))).toBe('added');
    expect(await t.add(msg(odd), Buffer.from('again\n'))).toBe('present');
    await t.close();
    const names = (await fs.readdir(path.join(tmp, 'mail', 'erin', 'cur'))).sort();
    expect(names.map((n) => migratedUidl(n.split(':')[0]!))).toEqual([odd, 'second']);
    expect(names[0]).toMatch(/:2,S$/);
    expect(names[1]).toMatch(/:2,$/);
  });

  it('a kept UIDL in this maildrop\'s own Dovecot format is never given to a later message', async () => {
    const s = store();
    const t = await s.openTarget('finn');
    const list = await fs.readFile(path.join(tmp, 'mail', 'finn', 'dovecot-uidlist'), 'latin1');
    const validity = Number(/V(\d+)/.exec(list)![1]).toString(16).padStart(8, '0');
    await t.add(msg(`00000009${validity}`), Buffer.from('x\n'));
    await t.close();
    const after = await fs.readFile(path.join(tmp, 'mail', 'finn', 'dovecot-uidlist'), 'latin1');
    expect(Number(/ N(\d+)/.exec(after)![1])).toBeGreaterThanOrEqual(10);
  });

  it('a file named like a migrated one whose UIDL another message reports keeps its own UIDL', async () => {
    const s = store();
    const t = await s.openTarget('gail');
    await t.add(msg('shared'), Buffer.from('one\n'));
    await t.close();
    // The same UIDL planted a second time under another name.
    const hex = Buffer.from('shared').toString('hex');
    await fs.writeFile(path.join(tmp, 'mail', 'gail', 'new', `1.M1P1V${hex}.poplar-migrated`), 'two\n');
    const again = await s.openTarget('gail');
    const uidls = await again.uidls();
    await again.close();
    expect(uidls.has('shared')).toBe(true);
    expect(uidls.size).toBe(2);
    const src = await s.openSource('gail');
    expect(src.messages.filter((m) => m.uidl === 'shared')).toHaveLength(1);
    await src.close();
  });

  it('users() lists maildrops only, never links, hidden entries or plain files', async () => {
    const root = path.join(tmp, 'users-root');
    for (const u of ['ann', 'ben']) await fs.mkdir(path.join(root, u, 'cur'), { recursive: true });
    await fs.mkdir(path.join(root, '.hidden', 'cur'), { recursive: true });
    await fs.mkdir(path.join(root, 'no-maildir'), { recursive: true });
    await fs.writeFile(path.join(root, 'file'), '');
    await fs.symlink(path.join(root, 'ann'), path.join(root, 'link'));
    expect(await new MaildirMigration({ root, logger: silentLogger() }).users()).toEqual(['ann', 'ben']);
  });

  it('refuses user names that are no plain directory name', async () => {
    for (const bad of ['..', '.x', 'a/b', '']) await expect(store().openTarget(bad)).rejects.toThrow(/not a user name/);
  });
});
