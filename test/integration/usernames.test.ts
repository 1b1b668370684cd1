/**
 * One definition of a user name (src/auth/username.ts): whatever
 * `poplar user add` accepts, USER and every SASL mechanism accept too, and the
 * other way round.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { EX_DATAERR, UserCommandError, userAdd } from '../../src/cli/user.js';
import { startTestServer, type TestServer } from '../helpers/server.js';
import { Wire } from '../helpers/wire.js';

let srv: TestServer | undefined;
afterEach(async () => {
  await srv?.stop();
  srv = undefined;
});

const longest = '€'.repeat(85); // 255 octets of UTF-8
const tooLong = '€'.repeat(86); // 258 octets, 86 characters

async function addCode(file: string, name: string): Promise<number | undefined> {
  try {
    await userAdd(file, name, 'pw€', 'PLAIN');
    return undefined;
  } catch (e) {
    if (e instanceof UserCommandError) return e.exitCode;
    throw e;
  }
}

describe('user name limits are the same everywhere', () => {
  it('poplar user add counts octets, not characters: 255 € (765 octets) and 86 € are refused, 85 € accepted', async () => {
    srv = await startTestServer({ users: [] });
    expect(await addCode(srv.usersFile, '€'.repeat(255))).toBe(EX_DATAERR);
    expect(await addCode(srv.usersFile, tooLong)).toBe(EX_DATAERR);
    expect(await addCode(srv.usersFile, `bad\u0001name`)).toBe(EX_DATAERR);
    expect(await addCode(srv.usersFile, longest)).toBeUndefined();
  });

  it('the longest name user add accepts logs in with USER/PASS and AUTH PLAIN; one octet-character more is refused by USER', async () => {
    srv = await startTestServer({ users: [] });
    await userAdd(srv.usersFile, longest, 'pw€', 'PLAIN');

    const a = await Wire.connect(srv.port);
    expect(await a.line()).toBe('+OK Poplar ready.');
    expect(await a.cmd(`USER ${tooLong}`)).toBe('-ERR Invalid user name.');
    expect(await a.cmd(`USER bad\tname`)).toBe('-ERR Invalid user name.');
    expect(await a.cmd(`USER ${longest}`)).toBe('+OK');
    expect(await a.cmd('PASS pw€')).toBe('+OK Logged in.');
    expect(await a.cmd('QUIT')).toMatch(/^\+OK/);
    await a.closed();

    const b = await Wire.connect(srv.port);
    expect(await b.line()).toBe('+OK Poplar ready.');
    expect(await b.cmd(`AUTH PLAIN ${Buffer.from(`\0${tooLong}\0pw€`).toString('base64')}`)).toBe('-ERR [AUTH] Authentication failed.');
    expect(await b.cmd(`AUTH PLAIN ${Buffer.from(`\0${longest}\0pw€`).toString('base64')}`)).toBe('+OK Logged in.');
    expect(await b.cmd('QUIT')).toMatch(/^\+OK/);
    await b.closed();
  });
});
