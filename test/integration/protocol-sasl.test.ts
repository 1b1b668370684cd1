/**
 * RFC 5034 AUTH with PLAIN and LOGIN over real sockets, and the RFC 3206
 * response codes of a failed login ([AUTH], [SYS/TEMP]).
 */
import { promises as fs } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestServer, type TestServer } from '../helpers/server.js';
import { Wire } from '../helpers/wire.js';

const b64 = (s: string | Buffer): string => Buffer.from(typeof s === 'string' ? Buffer.from(s, 'utf8') : s).toString('base64');
const P255 = 'p'.repeat(255);
const P256 = 'q'.repeat(256);
const U255 = 'u'.repeat(255);

let srv: TestServer;
beforeAll(async () => {
  srv = await startTestServer({
    users: [
      { name: 'alice', password: 'secret' },
      { name: 'bob', password: 'a  b c' },
      { name: 'long255', password: P255 },
      { name: 'long256', password: P256 },
      { name: U255, password: 'x' },
      { name: 'jörg', password: 'pässwörd' },
    ],
    settings: { max_bad_commands: 1000 },
  });
  await srv.deliver('alice', 'Subject: s\n\nbody\n');
});
afterAll(() => srv.stop());

async function connect(): Promise<Wire> {
  const w = await Wire.connect(srv.port);
  expect(await w.line()).toBe('+OK Poplar ready.');
  return w;
}

async function quit(w: Wire): Promise<void> {
  expect(await w.cmd('QUIT')).toMatch(/^\+OK /);
  await w.closed();
}

/** After a failed AUTH the session must be exactly as before: USER/PASS works. */
async function stillInAuthorization(w: Wire): Promise<void> {
  expect(await w.cmd('STAT')).toBe('-ERR Not logged in.');
  expect(await w.cmd('USER alice')).toBe('+OK');
  expect(await w.cmd('PASS secret')).toBe('+OK Logged in.');
  expect(await w.cmd('STAT')).toBe('+OK 1 20');
  await quit(w);
}

describe('AUTH PLAIN', () => {
  it('with an initial response', async () => {
    const w = await connect();
    expect(await w.cmd(`AUTH PLAIN ${b64('\0alice\0secret')}`)).toBe('+OK Logged in.');
    expect(await w.cmd('STAT')).toBe('+OK 1 20');
    await quit(w);
  });

  it('without one: the empty challenge is exactly "+ " CRLF', async () => {
    const w = await connect();
    w.send('auth plain');
    await new Promise((r) => setTimeout(r, 50));
    expect(w.pending.toString('latin1')).toBe('+ \r\n');
    expect(await w.line()).toBe('+ ');
    expect(await w.cmd(b64('\0alice\0secret'))).toBe('+OK Logged in.');
    await quit(w);
  });

  it('passwords with spaces and UTF-8 names', async () => {
    const w = await connect();
    expect(await w.cmd(`AUTH PLAIN ${b64('\0bob\0a  b c')}`)).toBe('+OK Logged in.');
    await quit(w);
    const w2 = await connect();
    expect(await w2.cmd(`AUTH PLAIN ${b64('\0jörg\0pässwörd')}`)).toBe('+OK Logged in.');
    await quit(w2);
  });

  it('"=" is an empty initial response (a malformed PLAIN message, so a credential failure), not bad base64', async () => {
    const w = await connect();
    expect(await w.cmd('AUTH PLAIN =')).toBe('-ERR [AUTH] Authentication failed.');
    await stillInAuthorization(w);
  });

  it('an empty line answering the challenge is an empty response', async () => {
    const w = await connect();
    expect(await w.cmd('AUTH PLAIN')).toBe('+ ');
    expect(await w.cmd('')).toBe('-ERR [AUTH] Authentication failed.');
    await stillInAuthorization(w);
  });

  it('"*" cancels: -ERR without [AUTH], state unchanged', async () => {
    const w = await connect();
    expect(await w.cmd('AUTH PLAIN')).toBe('+ ');
    const r = await w.cmd('*');
    expect(r).toMatch(/^-ERR /);
    expect(r).not.toContain('[AUTH]');
    await stillInAuthorization(w);
  });

  it('invalid base64 in the initial response or the continuation gets -ERR', async () => {
    const w = await connect();
    for (const bad of ['!!!!', 'AGFsaWNl*', 'YQ', 'YQ=', 'Y===', 'AGFs aWNl']) {
      const r = await w.cmd(`AUTH PLAIN ${bad}`);
      expect(r, bad).toMatch(/^-ERR /);
      expect(r, bad).not.toContain('[AUTH]');
    }
    expect(await w.cmd('AUTH PLAIN')).toBe('+ ');
    const r = await w.cmd('not base64!');
    expect(r).toMatch(/^-ERR /);
    expect(r).not.toContain('[AUTH]');
    await stillInAuthorization(w);
  });

  it('wrong password and unknown user: -ERR [AUTH]; the session then logs in normally', async () => {
    const w = await connect();
    expect(await w.cmd(`AUTH PLAIN ${b64('\0alice\0wrong')}`)).toBe('-ERR [AUTH] Authentication failed.');
    expect(await w.cmd(`AUTH PLAIN ${b64('\0nobody\0secret')}`)).toBe('-ERR [AUTH] Authentication failed.');
    expect(await w.cmd(`AUTH PLAIN ${b64('\0alice\0secret')}`)).toBe('+OK Logged in.');
    await quit(w);
  });

  it('authzid equal to authcid is fine; a different authzid is refused', async () => {
    const w = await connect();
    expect(await w.cmd(`AUTH PLAIN ${b64('bob\0alice\0secret')}`)).toBe('-ERR [AUTH] Authentication failed.');
    expect(await w.cmd(`AUTH PLAIN ${b64('alice\0alice\0secret')}`)).toBe('+OK Logged in.');
    await quit(w);
  });

  it('fields of 255 octets pass, 256 are refused', async () => {
    const w = await connect();
    expect(await w.cmd(`AUTH PLAIN ${b64(`\0long256\0${P256}`)}`)).toBe('-ERR [AUTH] Authentication failed.');
    expect(await w.cmd(`AUTH PLAIN ${b64(`${'z'.repeat(256)}\0long255\0${P255}`)}`)).toBe('-ERR [AUTH] Authentication failed.');
    expect(await w.cmd(`AUTH PLAIN ${b64(`\0${U255}\0x`)}`)).toBe('+OK Logged in.');
    await quit(w);
    const w2 = await connect();
    expect(await w2.cmd(`AUTH PLAIN ${b64(`\0long255\0${P255}`)}`)).toBe('+OK Logged in.');
    await quit(w2);
    // The same 256-octet password is fine over USER/PASS, so the refusal above is PLAIN's field limit.
    const w3 = await connect();
    expect(await w3.cmd('USER long256')).toBe('+OK');
    expect(await w3.cmd(`PASS ${P256}`)).toBe('+OK Logged in.');
    await quit(w3);
  });

  it('NUL, CR or LF inside a field, missing or extra fields: refused', async () => {
    const w = await connect();
    for (const msg of ['\0ali\rce\0secret', '\0alice\0sec\nret', '\0alice\0secret\0', '\0alice\0sec\0ret', 'alice\0secret', 'alice', '\0\0secret', '\0alice\0secret\r\n']) {
      expect(await w.cmd(`AUTH PLAIN ${b64(msg)}`), JSON.stringify(msg)).toBe('-ERR [AUTH] Authentication failed.');
    }
    await stillInAuthorization(w);
  });
});

describe('AUTH LOGIN', () => {
  it('two base64 prompts, then +OK', async () => {
    const w = await connect();
    expect(await w.cmd('AUTH LOGIN')).toBe(`+ ${b64('Username:')}`);
    expect(await w.cmd(b64('alice'))).toBe(`+ ${b64('Password:')}`);
    expect(await w.cmd(b64('secret'))).toBe('+OK Logged in.');
    expect(await w.cmd('STAT')).toBe('+OK 1 20');
    await quit(w);
  });

  it('the user name as initial response', async () => {
    const w = await connect();
    expect(await w.cmd(`AUTH LOGIN ${b64('alice')}`)).toBe(`+ ${b64('Password:')}`);
    expect(await w.cmd(b64('secret'))).toBe('+OK Logged in.');
    await quit(w);
  });

  it('wrong password → -ERR [AUTH]; cancel at either prompt → -ERR; state unchanged', async () => {
    const w = await connect();
    expect(await w.cmd('AUTH LOGIN')).toMatch(/^\+ /);
    expect(await w.cmd(b64('alice'))).toMatch(/^\+ /);
    expect(await w.cmd(b64('wrong'))).toBe('-ERR [AUTH] Authentication failed.');
    expect(await w.cmd('AUTH LOGIN')).toMatch(/^\+ /);
    expect(await w.cmd('*')).toMatch(/^-ERR (?!\[AUTH\])/);
    expect(await w.cmd('AUTH LOGIN')).toMatch(/^\+ /);
    expect(await w.cmd(b64('alice'))).toMatch(/^\+ /);
    expect(await w.cmd('*')).toMatch(/^-ERR (?!\[AUTH\])/);
    await stillInAuthorization(w);
  });

  it('empty user name ("=" initial response) and NUL/CR/LF in fields are refused', async () => {
    const w = await connect();
    expect(await w.cmd('AUTH LOGIN =')).toBe('-ERR [AUTH] Authentication failed.');
    expect(await w.cmd(`AUTH LOGIN ${b64('ali\0ce')}`)).toBe('-ERR [AUTH] Authentication failed.');
    expect(await w.cmd(`AUTH LOGIN ${b64('alice\r\n')}`)).toBe('-ERR [AUTH] Authentication failed.');
    expect(await w.cmd(`AUTH LOGIN ${b64('alice')}`)).toMatch(/^\+ /);
    expect(await w.cmd(b64('sec\nret'))).toBe('-ERR [AUTH] Authentication failed.');
    expect(await w.cmd(`AUTH LOGIN ${b64('u'.repeat(256))}`)).toBe('-ERR [AUTH] Authentication failed.');
    await stillInAuthorization(w);
  });
});

describe('AUTH command errors', () => {
  it('unknown mechanisms get -ERR, state unchanged', async () => {
    const w = await connect();
    for (const m of ['FOO', 'PLAINX', 'GSSAPI', 'NTLM', 'KERBEROS_V4', 'SCRAM-SHA-512']) {
      const r = await w.cmd(`AUTH ${m}`);
      expect(r, m).toMatch(/^-ERR /);
      expect(r, m).not.toContain('[AUTH]');
    }
    expect(await w.cmd(`AUTH PLAIN ${b64('\0alice\0secret')} extra`)).toMatch(/^-ERR /);
    await stillInAuthorization(w);
  });

  it('a failed AUTH between USER and PASS is as if it was never sent: PASS still completes the USER', async () => {
    const w = await connect();
    expect(await w.cmd('USER alice')).toBe('+OK');
    expect(await w.cmd('AUTH FOO')).toMatch(/^-ERR /);
    expect(await w.cmd('PASS secret')).toBe('+OK Logged in.');
    await quit(w);
  });

  it('continuation lines have their own cap (max_auth_line_length), above the command-line cap', async () => {
    const w = await connect();
    // 8000 octets: over max_line_length (4096) but under max_auth_line_length (16384): it is read and judged.
    expect(await w.cmd('AUTH PLAIN')).toBe('+ ');
    expect(await w.cmd(b64(Buffer.alloc(6000, 0x61)))).toBe('-ERR [AUTH] Authentication failed.');
    // Over the cap: refused as too long, not as a credential failure, and the session goes on.
    expect(await w.cmd('AUTH PLAIN')).toBe('+ ');
    expect(await w.cmd('A'.repeat(20_000))).toBe('-ERR Authentication response too long.');
    expect(await w.cmd('AUTH LOGIN')).toMatch(/^\+ /);
    expect(await w.cmd('A'.repeat(16_383))).toBe('-ERR Authentication response too long.');
    // A continuation that never ends: one -ERR when it passes the cap, the rest of it is dropped.
    expect(await w.cmd('AUTH PLAIN')).toBe('+ ');
    w.sendRaw('B'.repeat(40_000));
    expect(await w.line()).toBe('-ERR Authentication response too long.');
    w.sendRaw('B'.repeat(1000) + '\r\n');
    await stillInAuthorization(w);
  });

  it('an over-long AUTH command line with an initial response is refused', async () => {
    const w = await connect();
    expect(await w.cmd(`AUTH PLAIN ${'A'.repeat(16_400)}`)).toMatch(/^-ERR /);
    await stillInAuthorization(w);
  });

  it('AUTH in TRANSACTION is refused', async () => {
    const w = await connect();
    expect(await w.cmd(`AUTH PLAIN ${b64('\0alice\0secret')}`)).toBe('+OK Logged in.');
    expect(await w.cmd(`AUTH PLAIN ${b64('\0alice\0secret')}`)).toMatch(/^-ERR /);
    expect(await w.cmd('STAT')).toBe('+OK 1 20');
    await quit(w);
  });
});

describe('[SYS/TEMP] when the user database is unavailable', () => {
  it('a missing passwd-file gives -ERR [SYS/TEMP], not [AUTH]', async () => {
    const s = await startTestServer();
    try {
      await fs.rm(s.usersFile);
      const w = await Wire.connect(s.port);
      expect(await w.line()).toMatch(/^\+OK /);
      expect(await w.cmd('USER alice')).toBe('+OK');
      expect(await w.cmd('PASS secret')).toMatch(/^-ERR \[SYS\/TEMP\] /);
      expect(await w.cmd(`AUTH PLAIN ${b64('\0alice\0secret')}`)).toMatch(/^-ERR \[SYS\/TEMP\] /);
      expect(await w.cmd('QUIT')).toMatch(/^\+OK/);
    } finally {
      await s.stop();
    }
  });
});
