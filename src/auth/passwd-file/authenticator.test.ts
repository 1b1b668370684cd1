import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { TemporaryFailure } from '../../errors.js';
import { dummyVerify, hashPassword, verifyPassword } from '../schemes.js';
import type { ConnectionInfo } from '../types.js';
import { PasswdFileAuthenticator } from './authenticator.js';
import { PasswdFile } from './passwd-file.js';

const CONN: ConnectionInfo = { remoteAddress: '192.0.2.1', remotePort: 50000, localAddress: '192.0.2.2', localPort: 110, secure: true };

let dir: string;
let path: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'poplar-auth-'));
  path = join(dir, 'users');
  const argon = await hashPassword('pencil');
  const sha = await hashPassword('pencil', 'SHA512-CRYPT');
  await writeFile(
    path,
    [
      `alice:${argon}:1000:1000::/home/alice::userdb_mail=maildir:~/Maildir`,
      `bob:${sha}`,
      'carol:{PLAIN}pencil',
      'dave:{NOPE}pencil',
      'erin:',
      '',
    ].join('\n'),
  );
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

function spies(): { verify: ReturnType<typeof vi.fn>; dummy: ReturnType<typeof vi.fn> } {
  return { verify: vi.fn(verifyPassword), dummy: vi.fn(dummyVerify) };
}

describe('PasswdFileAuthenticator', () => {
  it('accepts correct passwords and returns the home directory when set', async () => {
    const auth = new PasswdFileAuthenticator(path);
    expect(await auth.authenticate({ kind: 'password', username: 'alice', password: 'pencil' }, CONN)).toEqual({
      username: 'alice',
      home: '/home/alice',
    });
    const bob = await auth.authenticate({ kind: 'password', username: 'bob', password: 'pencil' }, CONN);
    expect(bob).toEqual({ username: 'bob' });
    expect(bob && 'home' in bob).toBe(false);
    expect(await auth.authenticate({ kind: 'password', username: 'carol', password: 'pencil', authzid: 'carol' }, CONN)).toEqual({ username: 'carol' });
  });

  it('rejects wrong passwords, wrong case user names and other authzids', async () => {
    const auth = new PasswdFileAuthenticator(path);
    expect(await auth.authenticate({ kind: 'password', username: 'alice', password: 'Pencil' }, CONN)).toBeNull();
    expect(await auth.authenticate({ kind: 'password', username: 'Alice', password: 'pencil' }, CONN)).toBeNull();
    expect(await auth.authenticate({ kind: 'password', username: 'carol', password: 'pencil', authzid: 'alice' }, CONN)).toBeNull();
  });

  it('runs dummyVerify for unknown users and does not call verify', async () => {
    const s = spies();
    const auth = new PasswdFileAuthenticator(path, s);
    expect(await auth.authenticate({ kind: 'password', username: 'mallory', password: 'pencil' }, CONN)).toBeNull();
    expect(s.dummy).toHaveBeenCalledTimes(1);
    expect(s.dummy).toHaveBeenCalledWith('pencil');
    expect(s.verify).not.toHaveBeenCalled();

    expect(await auth.authenticate({ kind: 'password', username: 'alice', password: 'wrong' }, CONN)).toBeNull();
    expect(s.verify).toHaveBeenCalledTimes(1);
    expect(s.dummy).toHaveBeenCalledTimes(1);
  });

  it('follows a wrong password under a cheap scheme with a dummyVerify, so it costs what an unknown user does', async () => {
    const s = spies();
    const auth = new PasswdFileAuthenticator(path, s);
    // {PLAIN} and SHA512-CRYPT: wrong costs one dummy each; right costs none
    expect(await auth.authenticate({ kind: 'password', username: 'carol', password: 'wrong' }, CONN)).toBeNull();
    expect(s.dummy).toHaveBeenCalledTimes(1);
    expect(await auth.authenticate({ kind: 'password', username: 'bob', password: 'wrong' }, CONN)).toBeNull();
    expect(s.dummy).toHaveBeenCalledTimes(2);
    expect(await auth.authenticate({ kind: 'password', username: 'carol', password: 'pencil' }, CONN)).toEqual({ username: 'carol' });
    expect(await auth.authenticate({ kind: 'password', username: 'bob', password: 'pencil' }, CONN)).toEqual({ username: 'bob' });
    // argon2id already costs a dummy's worth: no second one
    expect(await auth.authenticate({ kind: 'password', username: 'alice', password: 'wrong' }, CONN)).toBeNull();
    expect(s.dummy).toHaveBeenCalledTimes(2);
    expect(s.verify).toHaveBeenCalledTimes(5);
  });

  it('treats unusable stored secrets like unknown users and warns once per user', async () => {
    const s = spies();
    const logs: string[] = [];
    const auth = new PasswdFileAuthenticator(path, { ...s, logger: (m) => logs.push(m) });
    for (let i = 0; i < 3; i++) {
      expect(await auth.authenticate({ kind: 'password', username: 'dave', password: 'pencil' }, CONN)).toBeNull();
    }
    expect(await auth.authenticate({ kind: 'password', username: 'erin', password: '' }, CONN)).toBeNull();
    expect(s.dummy).toHaveBeenCalledTimes(4);
    expect(s.verify).not.toHaveBeenCalled();
    expect(logs).toHaveLength(2);
    expect(logs[0]).toMatch(/user dave: unusable password field: unknown password scheme \{NOPE\}/);
    expect(logs[1]).toMatch(/user erin: .*empty/);
  });

  it('refuses CR, LF and NUL in user names and passwords without touching the file', async () => {
    const s = spies();
    const auth = new PasswdFileAuthenticator(join(dir, 'does-not-exist'), s);
    for (const [username, password] of [
      ['carol\r', 'pencil'],
      ['carol', 'pencil\n'],
      ['car\0ol', 'pencil'],
      ['carol', 'pen\0cil'],
      ['', 'pencil'],
    ] as const) {
      expect(await auth.authenticate({ kind: 'password', username, password }, CONN)).toBeNull();
    }
    expect(s.verify).not.toHaveBeenCalled();
  });

  it('returns null for bearer credentials', async () => {
    const auth = new PasswdFileAuthenticator(path);
    expect(await auth.authenticate({ kind: 'bearer', username: 'alice', token: 'x' }, CONN)).toBeNull();
  });

  it('throws SYS/TEMP when the file cannot be read', async () => {
    const auth = new PasswdFileAuthenticator(join(dir, 'missing'));
    const err = await auth.authenticate({ kind: 'password', username: 'alice', password: 'pencil' }, CONN).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TemporaryFailure);
  });

  it('honours an already aborted signal', async () => {
    const auth = new PasswdFileAuthenticator(path);
    const ac = new AbortController();
    ac.abort(new Error('gone'));
    await expect(auth.authenticate({ kind: 'password', username: 'carol', password: 'pencil' }, CONN, ac.signal)).rejects.toThrow('gone');
  });

  it('sees password changes after reload (shared PasswdFile with an injected clock)', async () => {
    let t = 0;
    const file = new PasswdFile(path, { now: () => t });
    const auth = new PasswdFileAuthenticator(file);
    expect(await auth.authenticate({ kind: 'password', username: 'carol', password: 'pencil' }, CONN)).not.toBeNull();
    await writeFile(path, 'carol:{PLAIN}crayon-new\n');
    t += 1500;
    expect(await auth.authenticate({ kind: 'password', username: 'carol', password: 'pencil' }, CONN)).toBeNull();
    expect(await auth.authenticate({ kind: 'password', username: 'carol', password: 'crayon-new' }, CONN)).toEqual({ username: 'carol' });
  });

  it('lookupSecret returns the stored secret', async () => {
    const auth = new PasswdFileAuthenticator(path);
    expect(await auth.lookupSecret('carol')).toBe('{PLAIN}pencil');
    expect(await auth.lookupSecret('mallory')).toBeUndefined();
    expect(await auth.lookupSecret('carol\n')).toBeUndefined();
    await auth.close();
  });
});
