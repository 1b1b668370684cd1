/**
 * RFC 2449 over real sockets: CAPA, line lengths, PIPELINING and output
 * backpressure, response codes.
 */
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { edgeCorpus, expectedRetr } from '../corpus/corpus.js';
import { putMessage, startTestServer, type TestServer } from '../helpers/server.js';
import { Wire } from '../helpers/wire.js';

const M1 = 'Subject: one\r\n\r\n.dot\r\nbody\r\n'; // 28
const M2 = 'Subject: two\n\nx\n'; // 19

/** ~2 MiB with many dot lines, stored with bare LF. */
function twoMiB(): Buffer {
  const lines: string[] = ['Subject: big', ''];
  let n = 0;
  for (let size = 0; size < 2 * 1024 * 1024; n++) {
    const l = n % 7 === 0 ? '.' : n % 11 === 0 ? `..${n}` : `line ${n} ${'x'.repeat(n % 90)}`;
    lines.push(l);
    size += l.length + 1;
  }
  return Buffer.from(lines.join('\n') + '\n', 'latin1');
}

const BIG = twoMiB();
const HUGE = edgeCorpus().find((m) => m.name === '5 MiB pseudo-random')!.raw;

let srv: TestServer;
beforeAll(async () => {
  srv = await startTestServer({
    users: [
      { name: 'alice', password: 'secret' },
      { name: 'big', password: 'big' },
      { name: 'huge', password: 'huge' },
      { name: 'empty', password: 'empty' },
    ],
    settings: { max_bad_commands: 1000, expire: 30 },
  });
  await putMessage(srv.maildirRoot, 'alice', '1700000000.M1P1.test', M1);
  await putMessage(srv.maildirRoot, 'alice', '1700000001.M2P1.test', M2);
  await putMessage(srv.maildirRoot, 'big', '1700000000.M1P1.test', BIG);
  await putMessage(srv.maildirRoot, 'huge', '1700000000.M1P1.test', HUGE);
});
afterAll(() => srv.stop());

async function connect(): Promise<Wire> {
  const w = await Wire.connect(srv.port);
  expect(await w.line()).toBe('+OK Poplar ready.');
  return w;
}

async function session(user = 'alice', password = 'secret'): Promise<Wire> {
  const w = await connect();
  expect(await w.cmd(`USER ${user}`)).toBe('+OK');
  expect(await w.cmd(`PASS ${password}`)).toBe('+OK Logged in.');
  return w;
}

const CAPA_BEFORE = ['TOP', 'USER', 'SASL *', 'RESP-CODES', 'AUTH-RESP-CODE', 'PIPELINING', 'UIDL', 'EXPIRE 30', 'STLS', 'IMPLEMENTATION Poplar'];

/**
 * CAPA lines with the SASL line reduced to `SASL *` (more mechanisms are being
 * added); PLAIN and LOGIN must be in it when cleartext logins are allowed, and
 * must not be when they are not.
 */
function capaShape(lines: string[], plaintext = true): string[] {
  return lines.map((l) => {
    if (!l.startsWith('SASL ')) return l;
    const mechs = l.slice(5).split(' ');
    if (plaintext) expect(mechs).toEqual(expect.arrayContaining(['PLAIN', 'LOGIN']));
    else expect(mechs.filter((m) => m === 'PLAIN' || m === 'LOGIN')).toEqual([]);
    return 'SASL *';
  });
}


describe('CAPA', () => {
  it('before login: the full list; after login: the same minus STLS (RFC 2595 §4), USER and SASL kept', async () => {
    const w = await connect();
    const before = await w.cmdLines('CAPA');
    expect(before.status).toMatch(/^\+OK/);
    expect(capaShape(before.lines)).toEqual(CAPA_BEFORE);
    expect(await w.cmd('USER alice')).toBe('+OK');
    expect(await w.cmd('PASS secret')).toBe('+OK Logged in.');
    const after = await w.cmdLines('capa');
    expect(after.status).toMatch(/^\+OK/);
    expect(capaShape(after.lines)).toEqual(CAPA_BEFORE.filter((l) => l !== 'STLS'));
    // The same SASL list after login.
    expect(after.lines.find((l) => l.startsWith('SASL '))).toBe(before.lines.find((l) => l.startsWith('SASL ')));
    for (const l of [before.status, after.status, ...before.lines, ...after.lines]) expect(Buffer.byteLength(l) + 2).toBeLessThan(512);
    expect(await w.cmd('QUIT')).toMatch(/^\+OK/);
  });

  it('CAPA does not disturb a pending USER', async () => {
    const w = await connect();
    expect(await w.cmd('USER alice')).toBe('+OK');
    expect(capaShape((await w.cmdLines('CAPA')).lines)).toEqual(CAPA_BEFORE);
    expect(await w.cmd('PASS secret')).toBe('+OK Logged in.');
    expect(await w.cmd('QUIT')).toMatch(/^\+OK/);
  });

  it('bare AUTH lists the same mechanisms as the SASL capability', async () => {
    const w = await connect();
    const sasl = (await w.cmdLines('CAPA')).lines.find((l) => l.startsWith('SASL '))!;
    const listed = await w.cmdLines('AUTH');
    expect(listed.status).toBe('+OK Supported mechanisms follow');
    expect(listed.lines).toEqual(sasl.slice(5).split(' '));
    expect(listed.lines).toEqual(expect.arrayContaining(['PLAIN', 'LOGIN']));
    w.close();
  });
});

describe('line lengths', () => {
  it('accepts a 255-octet command line (CRLF included)', async () => {
    const w = await connect();
    const line = `USER ${'x'.repeat(248)}`;
    expect(Buffer.byteLength(line) + 2).toBe(255);
    expect(await w.cmd(line)).toBe('+OK');
    w.close();
  });

  it('max_line_length octets pass; one more is -ERR and the connection stays usable', async () => {
    const w = await connect();
    const max = 4096;
    const ok = `CAPA ${'x'.repeat(max - 7)}`;
    expect(ok.length + 2).toBe(max);
    expect(capaShape((await w.cmdLines(ok)).lines)).toEqual(CAPA_BEFORE);
    expect(await w.cmd(ok + 'x')).toBe('-ERR Line too long.');
    expect(await w.cmd(`CAPA ${'x'.repeat(10_000)}`)).toBe('-ERR Line too long.');
    expect(capaShape((await w.cmdLines('CAPA')).lines)).toEqual(CAPA_BEFORE);
    await w.login('alice', 'secret');
    expect(await w.cmd(`NOOP ${' '.repeat(max)}`)).toBe('-ERR Line too long.');
    expect(await w.cmd('STAT')).toBe('+OK 2 47');
    expect(await w.cmd('QUIT')).toMatch(/^\+OK/);
  });

  it('100 KB without a line end, then the line end: one -ERR, the session continues', async () => {
    const w = await connect();
    for (let i = 0; i < 10; i++) {
      w.sendRaw('Z'.repeat(10 * 1024));
      await sleep(5);
    }
    await sleep(50);
    w.sendRaw('\r\nCAPA\r\n');
    expect(await w.line()).toBe('-ERR Line too long.');
    expect(capaShape((await w.multiLines()).lines)).toEqual(CAPA_BEFORE);
    await sleep(50);
    expect(w.pending.length).toBe(0);
    expect(await w.cmd('USER alice')).toBe('+OK');
    expect(await w.cmd('PASS secret')).toBe('+OK Logged in.');
    expect(await w.cmd('QUIT')).toMatch(/^\+OK/);
  });

  it('first lines of replies stay under 512 octets', async () => {
    const w = await connect();
    const replies = [
      await w.cmd('PASS x'),
      await w.cmd('X'.repeat(300)),
      await w.cmd('STAT'),
      await w.cmd(`USER ${'u'.repeat(300)}`),
      await w.cmd('AUTH NOSUCHMECHANISM'),
      await w.cmd(`AUTH ${'M'.repeat(400)}`),
    ];
    expect(await w.cmd('USER alice')).toBe('+OK');
    replies.push(await w.cmd('PASS wrong'));
    await w.login('alice', 'secret');
    replies.push(await w.cmd(`LIST ${'9'.repeat(300)}`), await w.cmd('RETR 99'), await w.cmd('TOP 1'));
    for (const r of replies) {
      expect(r).toMatch(/^-ERR /);
      expect(Buffer.byteLength(r) + 2).toBeLessThan(512);
    }
    expect(await w.cmd('QUIT')).toMatch(/^\+OK/);
  });
});

describe('PIPELINING', () => {
  it('STAT LIST UIDL RETR QUIT in one write: five complete replies, in order', async () => {
    const w = await session();
    w.sendRaw('STAT\r\nLIST\r\nUIDL\r\nRETR 1\r\nQUIT\r\n');
    expect(await w.line()).toBe('+OK 2 47');
    const list = await w.multiLines();
    expect(list.status).toMatch(/^\+OK/);
    expect(list.lines).toEqual(['1 28', '2 19']);
    const uidl = await w.multiLines();
    expect(uidl.status).toMatch(/^\+OK/);
    expect(uidl.lines.map((l) => l.split(' ')[0])).toEqual(['1', '2']);
    const retr = await w.multi();
    expect(retr.status).toBe('+OK 28 octets');
    expect(retr.body.toString('latin1')).toBe('Subject: one\r\n\r\n..dot\r\nbody\r\n.\r\n');
    expect(await w.line()).toBe('+OK Logging out, 0 messages deleted.');
    await w.closed();
    expect(w.pending.length).toBe(0);
  });

  it('the whole session, login included, in one write', async () => {
    const w = await connect();
    w.sendRaw('USER alice\r\nPASS wrong\r\nSTAT\r\nUSER alice\r\nPASS secret\r\nSTAT\r\nTOP 2 0\r\nDELE 2\r\nLIST\r\nRSET\r\nQUIT\r\n');
    expect(await w.line()).toBe('+OK');
    expect(await w.line()).toBe('-ERR [AUTH] Authentication failed.');
    expect(await w.line()).toBe('-ERR Not logged in.');
    expect(await w.line()).toBe('+OK');
    expect(await w.line()).toBe('+OK Logged in.');
    expect(await w.line()).toBe('+OK 2 47');
    const top = await w.multi();
    expect(top.body.toString('latin1')).toBe('Subject: two\r\n\r\n.\r\n');
    expect(await w.line()).toBe('+OK Marked to be deleted.');
    expect((await w.multiLines()).lines).toEqual(['1 28']);
    expect(await w.line()).toBe('+OK 2 messages (47 octets)');
    expect(await w.line()).toBe('+OK Logging out, 0 messages deleted.');
    await w.closed();
  });

  it('AUTH with its continuation line pipelined behind it', async () => {
    const w = await connect();
    const ir = Buffer.from('\0alice\0secret').toString('base64');
    w.sendRaw(`AUTH PLAIN\r\n${ir}\r\nSTAT\r\nQUIT\r\n`);
    expect(await w.line()).toBe('+ ');
    expect(await w.line()).toBe('+OK Logged in.');
    expect(await w.line()).toBe('+OK 2 47');
    expect(await w.line()).toMatch(/^\+OK Logging out/);
    await w.closed();
  });

  it('500 NOOPs and a RETR of a 2 MiB message in one write', async () => {
    const w = await session('big', 'big');
    w.sendRaw('NOOP\r\n'.repeat(500) + 'RETR 1\r\nNOOP\r\nQUIT\r\n');
    for (let i = 0; i < 500; i++) expect(await w.line()).toBe('+OK');
    const r = await w.multi();
    expect(r.status).toBe(`+OK ${BIG.length + BIG.toString('latin1').split('\n').length - 1} octets`);
    expect(r.body.equals(expectedRetr(BIG))).toBe(true);
    expect(await w.line()).toBe('+OK');
    expect(await w.line()).toMatch(/^\+OK Logging out/);
    await w.closed();
  });

  it('output backpressure: many 5 MiB RETRs to a client that does not read keep the server output buffer bounded', async () => {
    const COUNT = 6; // 30 MiB of replies
    const w = await session('huge', 'huge');
    expect(w.pending.length).toBe(0);
    const sock = w.socket;
    sock.removeAllListeners('data');
    sock.pause();
    // The server's end of this connection, found among the process's live handles (same process).
    const handles = (process as unknown as { _getActiveHandles(): unknown[] })._getActiveHandles();
    const server = handles.find((h): h is net.Socket => h instanceof net.Socket && h !== sock && h.remotePort === sock.localPort && h.localPort === sock.remotePort);
    expect(server).toBeDefined();
    const base = process.memoryUsage().arrayBuffers;
    sock.write('RETR 1\r\n'.repeat(COUNT) + 'QUIT\r\n');
    let peakQueued = 0;
    let peakArray = 0;
    for (let i = 0; i < 20; i++) {
      await sleep(50);
      peakQueued = Math.max(peakQueued, server!.writableLength);
      peakArray = Math.max(peakArray, process.memoryUsage().arrayBuffers - base);
    }
    // Without backpressure most of the 30 MiB would sit in the server's buffer by now (the kernel takes only a few MB).
    expect(peakQueued).toBeLessThan(2 * 1024 * 1024);
    expect(peakArray).toBeLessThan(16 * 1024 * 1024);

    // Now read everything: every reply complete and byte-exact, in order.
    const one = Buffer.concat([Buffer.from(`+OK ${HUGE.length + (HUGE.toString('latin1').match(/(?<!\r)\n/g) ?? []).length} octets\r\n`), expectedRetr(HUGE)]);
    const quit = Buffer.from('+OK Logging out, 0 messages deleted.\r\n');
    const total = one.length * COUNT + quit.length;
    let got = 0;
    let mismatch: string | undefined;
    const done = new Promise<void>((resolve) => {
      sock.on('data', (c: Buffer) => {
        if (mismatch === undefined) {
          for (let k = 0; k < c.length; k++) {
            const at = got + k;
            const want = at < one.length * COUNT ? one[at % one.length] : quit[at - one.length * COUNT];
            if (c[k] !== want) {
              mismatch = `byte ${at} differs`;
              break;
            }
          }
        }
        got += c.length;
      });
      sock.on('close', () => resolve());
    });
    sock.resume();
    await done;
    expect(mismatch).toBeUndefined();
    expect(got).toBe(total);
  });
});

describe('response codes come first', () => {
  it('-ERR [AUTH] on PASS, never on USER; [IN-USE] for a locked maildrop', async () => {
    const a = await session();
    const b = await connect();
    expect(await b.cmd('USER nobody')).toBe('+OK');
    expect(await b.cmd('PASS x')).toBe('-ERR [AUTH] Authentication failed.');
    expect(await b.cmd('USER alice')).toBe('+OK');
    expect(await b.cmd('PASS secret')).toMatch(/^-ERR \[IN-USE\] /);
    expect(await a.cmd('QUIT')).toMatch(/^\+OK/);
    b.close();
  });
});
