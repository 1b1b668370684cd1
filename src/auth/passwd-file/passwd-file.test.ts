import { mkdtemp, readFile, readdir, rm, stat, symlink, writeFile, chmod, rename } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  PasswdFile,
  PasswdFileError,
  addUser,
  formatPasswdEntry,
  listUsers,
  parsePasswdFile,
  removeUser,
  setPassword,
  usernameProblem,
} from './passwd-file.js';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'poplar-passwd-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

const SAMPLE = [
  '# comment',
  '',
  'alice:{PLAIN}secret:1000:1000:Alice A:/home/alice:/bin/sh:userdb_mail=maildir:~/Maildir nopassword allow_nets=127.0.0.1/8,::1',
  'bob:{SHA512-CRYPT}$6$x$y',
  '   ',
  'carol:{PLAIN}c::::/var/mail/carol',
  'Alice:{PLAIN}other',
  '',
].join('\n');

describe('parsePasswdFile', () => {
  it('parses all fields, optional trailing fields and extra fields with colons', () => {
    const { entries, errors } = parsePasswdFile(SAMPLE);
    expect(errors).toEqual([]);
    expect([...entries.keys()]).toEqual(['alice', 'bob', 'carol', 'Alice']);
    const a = entries.get('alice');
    expect(a).toMatchObject({ password: '{PLAIN}secret', uid: '1000', gid: '1000', gecos: 'Alice A', home: '/home/alice', shell: '/bin/sh' });
    expect(Object.fromEntries(a?.extra ?? [])).toEqual({
      userdb_mail: 'maildir:~/Maildir',
      nopassword: '',
      allow_nets: '127.0.0.1/8,::1',
    });
    expect(entries.get('bob')).toMatchObject({ password: '{SHA512-CRYPT}$6$x$y', uid: '', home: '', shell: '' });
    expect(entries.get('bob')?.extra.size).toBe(0);
    expect(entries.get('carol')?.home).toBe('/var/mail/carol');
    expect(entries.get('Alice')?.password).toBe('{PLAIN}other');
  });

  it('handles CRLF and a BOM', () => {
    const { entries, errors } = parsePasswdFile('\uFEFFu1:{PLAIN}a\r\nu2:{PLAIN}b::::/h\r\n');
    expect(errors).toEqual([]);
    expect(entries.get('u1')?.password).toBe('{PLAIN}a');
    expect(entries.get('u2')?.home).toBe('/h');
  });

  it('reports bad lines with their numbers and keeps the good ones; first duplicate wins', () => {
    const text = ['ok:{PLAIN}1', ':{PLAIN}nouser', ' spaced:{PLAIN}x', 'ok:{PLAIN}2', '../etc:{PLAIN}x', 'a/b:x', 'ctl:{PLAIN}a\u0001b', 'fine'].join('\n');
    const { entries, errors } = parsePasswdFile(text);
    expect(entries.get('ok')?.password).toBe('{PLAIN}1');
    expect(entries.get('fine')?.password).toBe('');
    expect(errors.map((e) => e.line)).toEqual([2, 3, 4, 5, 6, 7]);
    expect(errors[2]?.message).toMatch(/more than once/);
  });
});

describe('formatPasswdEntry', () => {
  it('round-trips through the parser and drops trailing empty fields', () => {
    expect(formatPasswdEntry({ username: 'u', password: '{PLAIN}p' })).toBe('u:{PLAIN}p');
    expect(formatPasswdEntry({ username: 'u', password: 'p', home: '/h' })).toBe('u:p::::/h');
    const line = formatPasswdEntry({
      username: 'u',
      password: 'p',
      uid: '1',
      extra: new Map([
        ['userdb_mail', 'maildir:~/M'],
        ['nopassword', ''],
      ]),
    });
    expect(line).toBe('u:p:1:::::userdb_mail=maildir:~/M nopassword');
    const back = parsePasswdFile(line).entries.get('u');
    expect(back?.uid).toBe('1');
    expect(back?.extra.get('userdb_mail')).toBe('maildir:~/M');
    expect(back?.extra.get('nopassword')).toBe('');
  });

  it('refuses values that cannot be represented', () => {
    expect(() => formatPasswdEntry({ username: 'u', password: 'a:b' })).toThrow(PasswdFileError);
    expect(() => formatPasswdEntry({ username: 'u', password: 'a\nb' })).toThrow(PasswdFileError);
    expect(() => formatPasswdEntry({ username: 'u', password: 'p', extra: new Map([['k', 'a b']]) })).toThrow(PasswdFileError);
    expect(() => formatPasswdEntry({ username: 'a b', password: 'p' })).toThrow(PasswdFileError);
  });
});

describe('usernameProblem', () => {
  it.each(['a:b', 'a b', 'a\tb', 'a\u0000', 'a\u007f', 'a/b', '.hidden', '#x', '', 'a\u00a0b'])('refuses %j', (n) => {
    expect(usernameProblem(n)).toBeTypeOf('string');
  });
  it.each(['alice', 'Alice', 'a.b', 'a@example.com', 'ünï', 'x-y_z+1'])('accepts %j', (n) => {
    expect(usernameProblem(n)).toBeUndefined();
  });
});

describe('PasswdFile reloads', () => {
  function clock(): { now: () => number; advance: (ms: number) => void } {
    let t = 1_000_000;
    return { now: () => t, advance: (ms) => (t += ms) };
  }

  it('re-reads a changed file only after the check interval', async () => {
    const path = join(dir, 'users');
    await writeFile(path, 'alice:{PLAIN}one\n');
    const c = clock();
    const pf = new PasswdFile(path, { now: c.now });
    expect((await pf.lookup('alice'))?.password).toBe('{PLAIN}one');

    await writeFile(path, 'alice:{PLAIN}two-longer\nbob:{PLAIN}b\n');
    c.advance(500);
    expect((await pf.lookup('alice'))?.password).toBe('{PLAIN}one'); // not checked yet
    c.advance(600);
    expect((await pf.lookup('alice'))?.password).toBe('{PLAIN}two-longer');
    expect((await pf.lookup('bob'))?.password).toBe('{PLAIN}b');
    expect(await pf.lookup('nobody')).toBeUndefined();
  });

  it('notices an atomic replacement (new inode) even with identical size', async () => {
    const path = join(dir, 'users');
    await writeFile(path, 'alice:{PLAIN}aaaa\n');
    const c = clock();
    const pf = new PasswdFile(path, { now: c.now });
    expect((await pf.lookup('alice'))?.password).toBe('{PLAIN}aaaa');
    await writeFile(join(dir, 'new'), 'alice:{PLAIN}bbbb\n');
    await rename(join(dir, 'new'), path);
    c.advance(1001);
    expect((await pf.lookup('alice'))?.password).toBe('{PLAIN}bbbb');
  });

  it('keeps the old content when the new version has bad lines or vanishes, and warns once', async () => {
    const path = join(dir, 'users');
    await writeFile(path, 'alice:{PLAIN}one\n');
    const c = clock();
    const warnings: string[] = [];
    const pf = new PasswdFile(path, { now: c.now, logger: (m) => warnings.push(m) });
    expect((await pf.lookup('alice'))?.password).toBe('{PLAIN}one');

    await writeFile(path, 'alice:{PLAIN}two\nbad user:x\n');
    c.advance(1001);
    expect((await pf.lookup('alice'))?.password).toBe('{PLAIN}one');
    expect(warnings.some((w) => /line 2/.test(w))).toBe(true);
    expect(warnings.some((w) => /keeping the previously loaded content/.test(w))).toBe(true);
    const n = warnings.length;
    c.advance(1001);
    await pf.lookup('alice');
    expect(warnings.length).toBe(n); // same rejected version: no repeated warnings

    await rm(path);
    c.advance(1001);
    expect((await pf.lookup('alice'))?.password).toBe('{PLAIN}one');
    expect(warnings.at(-1)).toMatch(/cannot re-read/);

    await writeFile(path, 'alice:{PLAIN}three\n');
    c.advance(1001);
    expect((await pf.lookup('alice'))?.password).toBe('{PLAIN}three');
  });

  it('uses the good lines of a first load with bad lines, warning about them', async () => {
    const path = join(dir, 'users');
    await writeFile(path, 'alice:{PLAIN}one\n bad:x\n');
    const warnings: string[] = [];
    const pf = new PasswdFile(path, { logger: (m) => warnings.push(m) });
    expect((await pf.lookup('alice'))?.password).toBe('{PLAIN}one');
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatch(/line 2: user name contains whitespace/);
  });

  it('throws when the file was never readable', async () => {
    const pf = new PasswdFile(join(dir, 'missing'));
    await expect(pf.lookup('alice')).rejects.toThrow(/cannot read/);
  });

  it('shares one read between concurrent lookups', async () => {
    const path = join(dir, 'users');
    await writeFile(path, 'alice:{PLAIN}one\n');
    const pf = new PasswdFile(path);
    const rs = await Promise.all([pf.lookup('alice'), pf.lookup('alice'), pf.lookup('x')]);
    expect(rs.map((r) => r?.password)).toEqual(['{PLAIN}one', '{PLAIN}one', undefined]);
  });

  it('reloads in real time after more than a second', async () => {
    const path = join(dir, 'users');
    await writeFile(path, 'alice:{PLAIN}one\n');
    const pf = new PasswdFile(path);
    expect((await pf.lookup('alice'))?.password).toBe('{PLAIN}one');
    await writeFile(path, 'alice:{PLAIN}two\n');
    await new Promise((r) => setTimeout(r, 1100));
    expect((await pf.lookup('alice'))?.password).toBe('{PLAIN}two');
  });
});

describe('atomic updates', () => {
  const mode = async (p: string): Promise<number> => (await stat(p)).mode & 0o777;

  it('creates the file (and its directory) with mode 0600 and keeps 0600 across updates', async () => {
    const path = join(dir, 'sub', 'users');
    await addUser(path, { username: 'alice', password: '{PLAIN}a' });
    expect(await mode(path)).toBe(0o600);
    await addUser(path, { username: 'bob', password: '{PLAIN}b', home: '/home/bob' });
    await setPassword(path, 'alice', '{PLAIN}a2');
    expect(await mode(path)).toBe(0o600);
    await removeUser(path, 'bob');
    expect(await mode(path)).toBe(0o600);
    expect(await readFile(path, 'utf8')).toBe('alice:{PLAIN}a2\n');
    expect(await readdir(join(dir, 'sub'))).toEqual(['users']); // no temp or lock files left
  });

  it('keeps an existing mode such as 0640', async () => {
    const path = join(dir, 'users');
    await writeFile(path, 'alice:{PLAIN}a\n');
    await chmod(path, 0o640);
    await setPassword(path, 'alice', '{PLAIN}b');
    expect(await mode(path)).toBe(0o640);
  });

  it('preserves comments, other lines and the other fields of the edited line', async () => {
    const path = join(dir, 'users');
    await writeFile(path, SAMPLE);
    await setPassword(path, 'alice', '{PLAIN}new');
    await addUser(path, { username: 'dave', password: '{PLAIN}d' });
    const text = await readFile(path, 'utf8');
    expect(text).toBe(SAMPLE.replace('alice:{PLAIN}secret:', 'alice:{PLAIN}new:') + 'dave:{PLAIN}d\n');
    expect(await listUsers(path)).toEqual(['alice', 'bob', 'carol', 'Alice', 'dave']);
    await removeUser(path, 'Alice');
    expect(await listUsers(path)).toEqual(['alice', 'bob', 'carol', 'dave']);
  });

  it('setPassword on a line with only a user name adds the password field', async () => {
    const path = join(dir, 'users');
    await writeFile(path, 'solo\nfoo:x:1\n');
    await setPassword(path, 'solo', '{PLAIN}s');
    await setPassword(path, 'foo', '{PLAIN}f');
    expect(await readFile(path, 'utf8')).toBe('solo:{PLAIN}s\nfoo:{PLAIN}f:1\n');
  });

  it('reports errors with codes', async () => {
    const path = join(dir, 'users');
    const code = async (p: Promise<unknown>): Promise<string | undefined> => {
      try {
        await p;
        return undefined;
      } catch (e) {
        return e instanceof PasswdFileError ? e.code : `other: ${String(e)}`;
      }
    };
    expect(await code(setPassword(path, 'alice', '{PLAIN}x'))).toBe('NO_SUCH_USER');
    expect(await code(removeUser(path, 'alice'))).toBe('NO_SUCH_USER');
    expect(await code(listUsers(path))).toBe('READ_FAILED');
    await addUser(path, { username: 'alice', password: '{PLAIN}x' });
    expect(await code(addUser(path, { username: 'alice', password: '{PLAIN}y' }))).toBe('USER_EXISTS');
    expect(await code(addUser(path, { username: 'ALICE', password: '{PLAIN}y' }))).toBeUndefined(); // case-sensitive
    for (const bad of ['a:b', 'a b', '.x', 'a/b', 'a\nb', '']) {
      expect(await code(addUser(path, { username: bad, password: '{PLAIN}y' }))).toBe('INVALID_NAME');
    }
    expect(await code(setPassword(path, 'alice', 'a:b'))).toBe('INVALID_FIELD');
    expect(await code(addUser(join(dir, 'users', 'nested'), { username: 'x', password: 'y' }))).toBe('WRITE_FAILED');
    expect(await listUsers(path)).toEqual(['alice', 'ALICE']);
  });

  it('serialises concurrent writers without losing updates', async () => {
    const path = join(dir, 'users');
    await Promise.all(Array.from({ length: 8 }, (_, i) => addUser(path, { username: `u${i}`, password: '{PLAIN}x' })));
    expect((await listUsers(path)).sort()).toEqual(['u0', 'u1', 'u2', 'u3', 'u4', 'u5', 'u6', 'u7']);
  });

  it('edits the target of a symlink instead of replacing the link', async () => {
    const real = join(dir, 'real-users');
    const link = join(dir, 'users');
    await writeFile(real, 'alice:{PLAIN}a\n', { mode: 0o600 });
    await symlink(real, link);
    await setPassword(link, 'alice', '{PLAIN}b');
    expect(await readFile(real, 'utf8')).toBe('alice:{PLAIN}b\n');
  });
});
