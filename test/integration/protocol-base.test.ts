/**
 * RFC 1939 base protocol over real sockets (USER/PASS logins only): replies
 * and states, the maildrop lock, numbering and sizes, every command, the
 * inactivity timer, TOP and UIDL, and the edge cases about arguments.
 */
import { spawnSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, describe, expect, it } from 'vitest';
import type { ServerSettings } from '../../src/server/context.js';
import { putMessage, startTestServer, type TestServer, type TestUser } from '../helpers/server.js';
import { Wire } from '../helpers/wire.js';

const USERS: TestUser[] = [
  { name: 'alice', password: 'secret' },
  { name: 'bob', password: 'a  b c' },
  { name: 'carol', password: 'pw' },
];

const M1 = 'a\nb\n'; // 6 octets as sent
const M2 = 'Subject: x\r\n\r\nhello\r\n'; // 21
const M3 = 'X: y\n\nline1\nline2\nline3\n'; // 29

let servers: TestServer[] = [];
afterEach(async () => {
  await Promise.all(servers.map((s) => s.stop()));
  servers = [];
});

async function server(settings: Partial<ServerSettings> = {}): Promise<TestServer> {
  const s = await startTestServer({ users: USERS, settings: { max_bad_commands: 100, ...settings } });
  servers.push(s);
  return s;
}

/** Messages in a fixed order (names sort by their leading number). */
async function seed(srv: TestServer, user: string, msgs: string[]): Promise<string[]> {
  const files: string[] = [];
  for (let i = 0; i < msgs.length; i++) files.push(await putMessage(srv.maildirRoot, user, `${1_700_000_000 + i}.M${i}P1.test`, msgs[i]!));
  return files;
}

/** Contents of every message file in the maildrop (new/ and cur/), sorted. */
async function onDisk(srv: TestServer, user: string): Promise<string[]> {
  const out: string[] = [];
  for (const sub of ['new', 'cur']) {
    const dir = path.join(srv.maildirRoot, user, sub);
    let names: string[] = [];
    try {
      names = await fs.readdir(dir);
    } catch {
      continue;
    }
    for (const n of names) if (!n.startsWith('.')) out.push(await fs.readFile(path.join(dir, n), 'latin1'));
  }
  return out.sort();
}

async function connect(srv: TestServer): Promise<Wire> {
  const w = await Wire.connect(srv.port);
  expect(await w.line()).toBe('+OK Poplar ready.');
  return w;
}

async function session(srv: TestServer, user = 'alice', password = 'secret'): Promise<Wire> {
  const w = await connect(srv);
  expect(await w.cmd(`USER ${user}`)).toBe('+OK');
  expect(await w.cmd(`PASS ${password}`)).toBe('+OK Logged in.');
  return w;
}

async function quit(w: Wire): Promise<void> {
  expect(await w.cmd('QUIT')).toMatch(/^\+OK /);
  await w.closed();
}

/** Retry a login until it is not refused as IN-USE (the lock is released asynchronously after a drop). */
async function loginEventually(srv: TestServer, user = 'alice', password = 'secret', ms = 3000): Promise<Wire> {
  const deadline = Date.now() + ms;
  const w = await connect(srv);
  for (;;) {
    expect(await w.cmd(`USER ${user}`)).toBe('+OK');
    const r = await w.cmd(`PASS ${password}`);
    if (r === '+OK Logged in.') return w;
    expect(r).toMatch(/^-ERR \[IN-USE\] /);
    if (Date.now() > deadline) throw new Error('maildrop lock never released');
    await sleep(25);
  }
}

describe('replies, keywords, states', () => {
  it('keywords are case-insensitive; STAT before login and unknown commands get -ERR', async () => {
    const srv = await server();
    await seed(srv, 'alice', [M1, M2]);
    const w = await connect(srv);
    expect(await w.cmd('STAT')).toBe('-ERR Not logged in.');
    expect(await w.cmd('LIST')).toBe('-ERR Not logged in.');
    expect(await w.cmd('RETR 1')).toBe('-ERR Not logged in.');
    expect(await w.cmd('XYZZY')).toBe('-ERR Unknown command.');
    expect(await w.cmd('')).toBe('-ERR Unknown command.');
    expect(await w.cmd('uSeR alice')).toBe('+OK');
    expect(await w.cmd('pass secret')).toBe('+OK Logged in.');
    expect(await w.cmd('stat')).toBe('+OK 2 27');
    expect(await w.cmd('StAt')).toBe('+OK 2 27');
    expect(await w.cmd('list 2')).toBe('+OK 2 21');
    expect(await w.cmd('XYZZY')).toBe('-ERR Unknown command.');
    expect(await w.cmd('USER alice')).toBe('-ERR Already logged in.');
    expect(await w.cmd('PASS secret')).toBe('-ERR Already logged in.');
    expect(await w.cmd('STLS')).toBe('-ERR Already logged in.');
    expect(await w.cmd('AUTH PLAIN')).toBe('-ERR Already logged in.');
    expect(await w.cmd('noop')).toBe('+OK');
    await quit(w);
  });

  it('every reply starts with +OK or -ERR followed by a space or CRLF', async () => {
    const srv = await server();
    await seed(srv, 'alice', [M1]);
    const w = await connect(srv);
    const replies: string[] = [];
    for (const c of ['CAPA', 'STAT', 'USER alice', 'PASS nope', 'USER alice', 'PASS secret', 'STAT', 'LIST 9', 'NOOP', 'DELE 1', 'RSET', 'BOGUS']) {
      w.send(c);
      replies.push(c === 'CAPA' ? (await w.multi()).status : await w.line());
    }
    for (const r of replies) expect(r).toMatch(/^(\+OK|-ERR)( |$)/);
    w.close();
  });
});

describe('USER and PASS', () => {
  it('PASS first gets -ERR; PASS needs a USER right before it', async () => {
    const srv = await server();
    const w = await connect(srv);
    expect(await w.cmd('PASS secret')).toBe('-ERR No user name given; send USER first.');
    expect(await w.cmd('USER alice')).toBe('+OK');
    expect(await w.cmd('PASS wrong')).toBe('-ERR [AUTH] Authentication failed.');
    // The failed PASS used up the USER.
    expect(await w.cmd('PASS secret')).toBe('-ERR No user name given; send USER first.');
    expect(await w.cmd('USER')).toBe('-ERR Invalid user name.');
    expect(await w.cmd('PASS secret')).toBe('-ERR No user name given; send USER first.');
    await quit(w);
  });

  it('the rest of the PASS line, spaces included, is the password', async () => {
    const srv = await server();
    const w = await connect(srv);
    expect(await w.cmd('USER bob')).toBe('+OK');
    expect(await w.cmd('PASS a b c')).toBe('-ERR [AUTH] Authentication failed.');
    expect(await w.cmd('USER bob')).toBe('+OK');
    expect(await w.cmd('PASS a  b c ')).toBe('-ERR [AUTH] Authentication failed.');
    expect(await w.cmd('USER bob')).toBe('+OK');
    expect(await w.cmd('PASS a  b c')).toBe('+OK Logged in.');
    expect(await w.cmd('STAT')).toBe('+OK 0 0');
    await quit(w);
  });

  it('a second USER replaces the first; USER of an unknown name is not revealed', async () => {
    const srv = await server();
    const w = await connect(srv);
    expect(await w.cmd('USER nosuchuser')).toBe('+OK');
    expect(await w.cmd('USER alice')).toBe('+OK');
    expect(await w.cmd('PASS secret')).toBe('+OK Logged in.');
    await quit(w);
    const w2 = await connect(srv);
    expect(await w2.cmd('USER alice')).toBe('+OK');
    expect(await w2.cmd('USER nosuchuser')).toBe('+OK');
    expect(await w2.cmd('PASS secret')).toBe('-ERR [AUTH] Authentication failed.');
    await quit(w2);
  });

  it('user names with NUL are refused at USER', async () => {
    const srv = await server();
    const w = await connect(srv);
    expect(await w.cmd('USER al\0ice')).toBe('-ERR Invalid user name.');
    expect(await w.cmd('PASS secret')).toBe('-ERR No user name given; send USER first.');
    expect(await w.cmd(`USER ${'u'.repeat(256)}`)).toBe('-ERR Invalid user name.');
    expect(await w.cmd(`USER ${'u'.repeat(255)}`)).toBe('+OK');
    w.close();
  });
});

describe('the maildrop lock', () => {
  it('a second concurrent login gets -ERR [IN-USE], stays in AUTHORIZATION and can log in after QUIT', async () => {
    const srv = await server();
    await seed(srv, 'alice', [M1]);
    const a = await session(srv);
    const b = await connect(srv);
    expect(await b.cmd('USER alice')).toBe('+OK');
    const r = await b.cmd('PASS secret');
    expect(r).toBe('-ERR [IN-USE] Maildrop is locked by another session.');
    expect(r.length).toBeLessThan(512);
    expect(await b.cmd('STAT')).toBe('-ERR Not logged in.');
    // A different user is not affected.
    const c = await session(srv, 'carol', 'pw');
    expect(await a.cmd('STAT')).toBe('+OK 1 6');
    await quit(a);
    // Unlocked before the +OK to QUIT: nobody holds the lock file's flock any more.
    expect(spawnSync('flock', ['--nonblock', path.join(srv.maildirRoot, 'alice', 'poplar-pop3.lock'), 'true']).status).toBe(0);
    expect(await b.cmd('USER alice')).toBe('+OK');
    expect(await b.cmd('PASS secret')).toBe('+OK Logged in.');
    expect(await b.cmd('STAT')).toBe('+OK 1 6');
    await quit(b);
    await quit(c);
  });

  it('the lock is released after a dropped socket', async () => {
    const srv = await server();
    const a = await session(srv);
    expect(await a.cmd('STAT')).toBe('+OK 0 0');
    a.close();
    const b = await loginEventually(srv);
    await quit(b);
  });

  it('the lock is released when the client drops right after sending PASS', async () => {
    const srv = await server();
    const a = await connect(srv);
    expect(await a.cmd('USER alice')).toBe('+OK');
    a.send('PASS secret');
    a.close();
    const b = await loginEventually(srv);
    await quit(b);
  });

  it('the lock is released after the idle timeout', async () => {
    const srv = await server({ idle_timeout: 0.3 });
    const a = await session(srv);
    expect(await a.line(3000)).toBe('-ERR Disconnected for inactivity.');
    await a.closed();
    const b = await loginEventually(srv, 'alice', 'secret', 1000);
    await quit(b);
  });

  it('a failed login leaves no lock behind; IN-USE is not a credential failure', async () => {
    const srv = await server();
    const a = await connect(srv);
    expect(await a.cmd('USER alice')).toBe('+OK');
    expect(await a.cmd('PASS wrong')).toBe('-ERR [AUTH] Authentication failed.');
    const b = await session(srv); // immediately: no retry needed
    expect(await a.cmd('USER alice')).toBe('+OK');
    expect(await a.cmd('PASS secret')).toBe('-ERR [IN-USE] Maildrop is locked by another session.');
    // The refused attempt must not have disturbed b's lock ...
    const c = await connect(srv);
    expect(await c.cmd('USER alice')).toBe('+OK');
    expect(await c.cmd('PASS secret')).toBe('-ERR [IN-USE] Maildrop is locked by another session.');
    await quit(b);
    // ... nor left one of its own.
    expect(await c.cmd('USER alice')).toBe('+OK');
    expect(await c.cmd('PASS secret')).toBe('+OK Logged in.');
    await quit(c);
    await quit(a);
  });
});

describe('numbering, sizes, STAT/LIST/UIDL, DELE/RSET/NOOP, QUIT', () => {
  it('sizes are exact octets as sent, and STAT/LIST add up', async () => {
    const srv = await server();
    await seed(srv, 'alice', [M1, M2, M3]);
    const w = await session(srv);
    expect(await w.cmd('LIST 1')).toBe('+OK 1 6');
    expect(await w.cmd('LIST 2')).toBe('+OK 2 21');
    expect(await w.cmd('LIST 3')).toBe('+OK 3 29');
    expect(await w.cmd('STAT')).toBe('+OK 3 56');
    const list = await w.cmdLines('LIST');
    expect(list.status).toMatch(/^\+OK/);
    expect(list.lines).toEqual(['1 6', '2 21', '3 29']);
    const r = await w.cmdMulti('RETR 1');
    expect(r.status).toBe('+OK 6 octets');
    expect(r.body.toString('latin1')).toBe('a\r\nb\r\n.\r\n');
    expect(r.body.length - 3).toBe(6);
    await quit(w);
  });

  it('DELE keeps numbers fixed and hides the message from STAT, LIST, UIDL, RETR, TOP, DELE', async () => {
    const srv = await server();
    await seed(srv, 'alice', [M1, M2, M3]);
    const w = await session(srv);
    const uidsBefore = (await w.cmdLines('UIDL')).lines;
    expect(uidsBefore).toHaveLength(3);
    expect(await w.cmd('DELE 2')).toBe('+OK Marked to be deleted.');
    expect(await w.cmd('STAT')).toBe('+OK 2 35');
    expect((await w.cmdLines('LIST')).lines).toEqual(['1 6', '3 29']);
    expect((await w.cmdLines('UIDL')).lines).toEqual([uidsBefore[0], uidsBefore[2]]);
    expect(await w.cmd('LIST 3')).toBe('+OK 3 29');
    expect(await w.cmd('LIST 2')).toMatch(/^-ERR /);
    expect(await w.cmd('UIDL 2')).toMatch(/^-ERR /);
    expect(await w.cmd('RETR 2')).toMatch(/^-ERR /);
    expect(await w.cmd('TOP 2 0')).toMatch(/^-ERR /);
    expect(await w.cmd('DELE 2')).toMatch(/^-ERR /);
    expect(await w.cmd('LIST 4')).toMatch(/^-ERR /);
    expect(await w.cmd('LIST 0')).toMatch(/^-ERR /);
    expect(await w.cmd('DELE 4')).toMatch(/^-ERR /);
    const r3 = await w.cmdMulti('RETR 3');
    expect(r3.body.toString('latin1')).toBe('X: y\r\n\r\nline1\r\nline2\r\nline3\r\n.\r\n');
    expect(await w.cmd('NOOP')).toBe('+OK');
    expect(await w.cmd('DELE 1')).toBe('+OK Marked to be deleted.');
    expect(await w.cmd('STAT')).toBe('+OK 1 29');
    expect(await w.cmd('RSET')).toBe('+OK 3 messages (56 octets)');
    expect(await w.cmd('STAT')).toBe('+OK 3 56');
    expect(await w.cmd('LIST 2')).toBe('+OK 2 21');
    expect((await w.cmdLines('UIDL')).lines).toEqual(uidsBefore);
    // Leaving without QUIT: nothing was removed.
    w.close();
    await sleep(50);
    expect(await onDisk(srv, 'alice')).toEqual([M1, M2, M3].sort());
  });

  it('an empty maildrop: STAT 0 0, LIST and UIDL are +OK then a lone dot', async () => {
    const srv = await server();
    const w = await session(srv);
    expect(await w.cmd('STAT')).toBe('+OK 0 0');
    w.send('LIST');
    const l = await w.multi();
    expect(l.status).toMatch(/^\+OK/);
    expect(l.body.toString('latin1')).toBe('.\r\n');
    w.send('UIDL');
    const u = await w.multi();
    expect(u.status).toMatch(/^\+OK/);
    expect(u.body.toString('latin1')).toBe('.\r\n');
    expect(await w.cmd('LIST 1')).toMatch(/^-ERR /);
    expect(await w.cmd('RETR 1')).toMatch(/^-ERR /);
    await quit(w);
  });

  it('QUIT in TRANSACTION removes exactly the marked messages', async () => {
    const srv = await server();
    await seed(srv, 'alice', [M1, M2, M3]);
    const w = await session(srv);
    expect(await w.cmd('DELE 1')).toBe('+OK Marked to be deleted.');
    expect(await w.cmd('DELE 3')).toBe('+OK Marked to be deleted.');
    expect(await w.cmd('QUIT')).toBe('+OK Logging out, 2 messages deleted.');
    await w.closed();
    expect(await onDisk(srv, 'alice')).toEqual([M2]);
    const w2 = await session(srv);
    expect(await w2.cmd('STAT')).toBe('+OK 1 21');
    expect(await w2.cmd('QUIT')).toBe('+OK Logging out, 0 messages deleted.');
    await w2.closed();
    expect(await onDisk(srv, 'alice')).toEqual([M2]);
  });

  it('RSET before QUIT: nothing removed', async () => {
    const srv = await server();
    await seed(srv, 'alice', [M1, M2]);
    const w = await session(srv);
    expect(await w.cmd('DELE 1')).toBe('+OK Marked to be deleted.');
    expect(await w.cmd('RSET')).toBe('+OK 2 messages (27 octets)');
    expect(await w.cmd('QUIT')).toBe('+OK Logging out, 0 messages deleted.');
    await w.closed();
    expect(await onDisk(srv, 'alice')).toEqual([M1, M2].sort());
  });

  it('QUIT in AUTHORIZATION is +OK and updates nothing', async () => {
    const srv = await server();
    await seed(srv, 'alice', [M1]);
    const w = await connect(srv);
    expect(await w.cmd('USER alice')).toBe('+OK');
    expect(await w.cmd('QUIT')).toBe('+OK Logging out.');
    await w.closed();
    expect(await onDisk(srv, 'alice')).toEqual([M1]);
  });

  it('DELE then a dropped socket removes nothing', async () => {
    const srv = await server();
    await seed(srv, 'alice', [M1, M2]);
    const w = await session(srv);
    expect(await w.cmd('DELE 1')).toBe('+OK Marked to be deleted.');
    expect(await w.cmd('DELE 2')).toBe('+OK Marked to be deleted.');
    w.close();
    const w2 = await loginEventually(srv);
    expect(await w2.cmd('STAT')).toBe('+OK 2 27');
    await quit(w2);
    expect(await onDisk(srv, 'alice')).toEqual([M1, M2].sort());
  });

  it('a client half-closing after DELE+QUIT still gets the update and the +OK', async () => {
    const srv = await server();
    await seed(srv, 'alice', [M1, M2]);
    const w = await session(srv);
    w.socket.end('DELE 2\r\nQUIT\r\n');
    expect(await w.line()).toBe('+OK Marked to be deleted.');
    expect(await w.line()).toBe('+OK Logging out, 1 message deleted.');
    await w.closed();
    expect(await onDisk(srv, 'alice')).toEqual([M1]);
  });

  it('when removal fails QUIT answers -ERR, never +OK', async () => {
    const srv = await server();
    await seed(srv, 'alice', [M1, M2]);
    const w = await session(srv);
    // Swap message 1's file for a directory: unlink() then fails (EISDIR), even for root.
    const cur = path.join(srv.maildirRoot, 'alice', 'cur');
    const names = (await fs.readdir(cur)).filter((n) => n.startsWith('1700000000.'));
    expect(names).toHaveLength(1);
    await fs.rm(path.join(cur, names[0]!));
    await fs.mkdir(path.join(cur, names[0]!));
    expect(await w.cmd('DELE 1')).toBe('+OK Marked to be deleted.');
    expect(await w.cmd('DELE 2')).toBe('+OK Marked to be deleted.');
    const r = await w.cmd('QUIT');
    expect(r).toMatch(/^-ERR \[SYS\/TEMP\] /);
    await w.closed();
    await fs.rm(path.join(cur, names[0]!), { recursive: true });
  });
});

describe('inactivity timers close without UPDATE', () => {
  it('idle timeout in TRANSACTION: -ERR, close, marked messages kept', async () => {
    const srv = await server({ idle_timeout: 0.4 });
    await seed(srv, 'alice', [M1, M2]);
    const w = await session(srv);
    expect(await w.cmd('DELE 1')).toBe('+OK Marked to be deleted.');
    const t0 = Date.now();
    expect(await w.line(3000)).toBe('-ERR Disconnected for inactivity.');
    expect(Date.now() - t0).toBeGreaterThanOrEqual(300);
    await w.closed();
    expect(await onDisk(srv, 'alice')).toEqual([M1, M2].sort());
    const w2 = await loginEventually(srv);
    expect(await w2.cmd('STAT')).toBe('+OK 2 27');
    await quit(w2);
  });

  it('activity resets the idle timer', async () => {
    const srv = await server({ idle_timeout: 1 });
    const w = await session(srv);
    for (let i = 0; i < 5; i++) {
      await sleep(350);
      expect(await w.cmd('NOOP')).toBe('+OK');
    }
    await quit(w);
  });

  it('login timeout: a client that never logs in is dropped', async () => {
    const srv = await server({ login_timeout: 0.3 });
    const w = await connect(srv);
    w.sendRaw('USER ali'); // and never finishes the line
    expect(await w.line(3000)).toBe('-ERR Disconnected for inactivity.');
    await w.closed();
  });
});

describe('TOP', () => {
  const MSG = 'H1: a\nH2: b\n\nl1\nl2\n.l3\n';
  const NOBLANK = 'H1: a\nH2: b\n';

  it('headers, the blank line, then n body lines; the whole message when n is larger', async () => {
    const srv = await server();
    await seed(srv, 'alice', [MSG, NOBLANK]);
    const w = await session(srv);
    const top = async (c: string): Promise<string> => {
      const r = await w.cmdMulti(c);
      expect(r.status).toMatch(/^\+OK/);
      return r.body.toString('latin1');
    };
    expect(await top('TOP 1 0')).toBe('H1: a\r\nH2: b\r\n\r\n.\r\n');
    expect(await top('TOP 1 1')).toBe('H1: a\r\nH2: b\r\n\r\nl1\r\n.\r\n');
    expect(await top('TOP 1 3')).toBe('H1: a\r\nH2: b\r\n\r\nl1\r\nl2\r\n..l3\r\n.\r\n');
    expect(await top('TOP 1 4')).toBe('H1: a\r\nH2: b\r\n\r\nl1\r\nl2\r\n..l3\r\n.\r\n');
    expect(await top('TOP 1 9999999999')).toBe('H1: a\r\nH2: b\r\n\r\nl1\r\nl2\r\n..l3\r\n.\r\n');
    expect(await top('top 1 000')).toBe('H1: a\r\nH2: b\r\n\r\n.\r\n');
    // No blank line: all of it is headers.
    expect(await top('TOP 2 0')).toBe('H1: a\r\nH2: b\r\n.\r\n');
    expect(await top('TOP 2 5')).toBe('H1: a\r\nH2: b\r\n.\r\n');
    // TOP marks nothing.
    expect(await w.cmd('STAT')).toBe('+OK 2 43');
    await quit(w);
  });

  it('bad TOP arguments get -ERR and the session goes on', async () => {
    const srv = await server();
    await seed(srv, 'alice', [MSG]);
    const w = await session(srv);
    for (const c of ['TOP 1 -1', 'TOP 1', 'TOP', 'TOP ', 'TOP 1 x', 'TOP x 1', 'TOP 2 0', 'TOP 0 0', 'TOP 1 0 0', 'TOP 1 99999999999', 'TOP 1  0']) {
      expect(await w.cmd(c), c).toMatch(/^-ERR /);
    }
    expect(await w.cmd('STAT')).toBe('+OK 1 29');
    await quit(w);
  });
});

describe('UIDL', () => {
  it('n uid lines; uids printable, unique, stable across sessions; UIDL n; never reused', async () => {
    const srv = await server();
    await seed(srv, 'alice', [M1, M2, M3]);
    const w = await session(srv);
    const u = await w.cmdLines('UIDL');
    expect(u.status).toMatch(/^\+OK/);
    expect(u.lines).toHaveLength(3);
    const uids = u.lines.map((l, i) => {
      const m = /^(\d+) ([\x21-\x7e]{1,70})$/.exec(l);
      expect(m, l).not.toBeNull();
      expect(Number(m![1])).toBe(i + 1);
      return m![2]!;
    });
    expect(new Set(uids).size).toBe(3);
    expect(await w.cmd('UIDL 2')).toBe(`+OK 2 ${uids[1]}`);
    expect(await w.cmd('UIDL 02')).toBe(`+OK 2 ${uids[1]}`);
    expect(await w.cmd('UIDL 4')).toMatch(/^-ERR /);
    expect(await w.cmd('UIDL 1 2')).toMatch(/^-ERR /);
    expect(await w.cmd('DELE 1')).toBe('+OK Marked to be deleted.');
    await quit(w);

    // Stable across sessions, and a new message never gets an old uid.
    await srv.deliver('alice', 'Subject: new\n\nnew\n');
    const w2 = await session(srv);
    const u2 = (await w2.cmdLines('UIDL')).lines.map((l) => l.split(' ')[1]!);
    expect(u2).toHaveLength(3);
    expect(u2.slice(0, 2)).toEqual([uids[1], uids[2]]);
    expect(uids).not.toContain(u2[2]);
    await quit(w2);
  });
});

describe('edge cases: arguments', () => {
  it('leading zeros, overflow, signs, doubled and trailing spaces, noise', async () => {
    const srv = await server();
    await seed(srv, 'alice', [M1, M2]);
    const w = await session(srv);
    expect(await w.cmd('LIST 01')).toBe('+OK 1 6');
    expect(await w.cmd('LIST 0000000002')).toBe('+OK 2 21');
    expect(await w.cmd('LIST 1 ')).toBe('+OK 1 6');
    expect(await w.cmd('STAT ')).toBe('+OK 2 27');
    for (const c of [
      'LIST 99999999999',
      'LIST 4294967297',
      'LIST 18446744073709551617',
      'RETR 99999999999999999999999',
      'LIST -1',
      'LIST +1',
      'LIST 1.0',
      'LIST 1e0',
      'LIST 0x1',
      'LIST \uff11',
      'LIST 1 x',
      'LIST 1 2',
      'LIST  1',
      'RETR',
      'RETR 1 1',
      'DELE',
      'DELE 0',
      'STAT x',
      'NOOP x',
      'RSET x',
    ]) {
      expect(await w.cmd(c), c).toMatch(/^-ERR /);
    }
    // None of that changed anything.
    expect(await w.cmd('STAT')).toBe('+OK 2 27');
    await quit(w);
  });
});
