/**
 * `poplar deliver` as an MTA runs it: the message on stdin, the exit code
 * (sysexits) and one line on stderr are all the MTA sees.
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runPoplar } from '../helpers/cli.js';
import { passwdLine } from '../helpers/lmtp.js';

let dir: string;
let config: string;
const MESSAGE = 'Subject: piped\n\nline one\n.dot\n';

beforeAll(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-deliver-'));
  await fs.writeFile(path.join(dir, 'users'), [passwdLine({ name: 'alice' }), passwdLine({ name: 'small', quotaBytes: 60 }), passwdLine({ name: 'bob@example.org' })].join(''));
  config = path.join(dir, 'poplar.toml');
  await fs.writeFile(config, `data_dir = ${JSON.stringify(dir)}\n[auth]\nusers = ${JSON.stringify(path.join(dir, 'users'))}\n[lmtp]\nmax_message_size = 2048\n`);
});
afterAll(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

async function stored(user: string): Promise<string[]> {
  const d = path.join(dir, 'mail', user, 'new');
  const names = (await fs.readdir(d).catch(() => [] as string[])).sort();
  return Promise.all(names.map((n) => fs.readFile(path.join(d, n), 'utf8')));
}

describe('poplar deliver', () => {
  it('delivers stdin with Return-Path and Delivered-To and exits 0', async () => {
    const r = await runPoplar(['deliver', '--config', config, '-f', 'sender@example.net', '-a', 'alice@example.org', '-d', 'alice'], { input: MESSAGE });
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(await stored('alice')).toEqual([`Return-Path: <sender@example.net>\nDelivered-To: alice@example.org\n${MESSAGE}`]);
  });

  it('maps an address to a user like LMTP, and without -f adds only Delivered-To', async () => {
    const r = await runPoplar(['deliver', '--config', config, '-d', 'Bob@Example.org'], { input: MESSAGE });
    expect(r.code).toBe(0);
    expect(await stored('bob@example.org')).toEqual([`Delivered-To: Bob@Example.org\n${MESSAGE}`]);
  });

  it('exits 67 for an unknown user, 75 over quota (temporary by default), 73 for a message that is too large', async () => {
    const unknown = await runPoplar(['deliver', '--config', config, '-d', 'ghost'], { input: MESSAGE });
    expect(unknown.code).toBe(67);
    expect(unknown.stderr).toBe('poplar deliver: no such user: ghost\n');
    const first = await runPoplar(['deliver', '--config', config, '-d', 'small'], { input: MESSAGE });
    expect(first.code).toBe(0);
    const full = await runPoplar(['deliver', '--config', config, '-d', 'small'], { input: MESSAGE });
    expect(full.code).toBe(75);
    expect(full.stderr).toMatch(/^poplar deliver: Mailbox is full/);
    expect(await stored('small')).toHaveLength(1);
    const big = await runPoplar(['deliver', '--config', config, '-d', 'alice'], { input: `Subject: big\n\n${'x'.repeat(3000)}\n` });
    expect(big.code).toBe(73);
    expect(await stored('alice')).toHaveLength(1);
  });

  it('exits 73 over quota when over_quota = "permanent", 78 for a bad configuration, 64 for a header-breaking sender', async () => {
    const perm = path.join(dir, 'perm.toml');
    await fs.writeFile(perm, `${await fs.readFile(config, 'utf8')}over_quota = "permanent"\n`);
    expect((await runPoplar(['deliver', '--config', perm, '-d', 'small'], { input: MESSAGE })).code).toBe(73);
    const bad = path.join(dir, 'bad.toml');
    await fs.writeFile(bad, '[lmtp]\nover_quota = "sometimes"\n');
    const r = await runPoplar(['deliver', '--config', bad, '-d', 'alice'], { input: MESSAGE });
    expect(r.code).toBe(78);
    expect(r.stderr.split('\n').filter(Boolean)).toHaveLength(1);
    expect((await runPoplar(['deliver', '--config', config, '-f', 'a@b\r\nX-Injected: 1', '-d', 'alice'], { input: MESSAGE })).code).toBe(64);
    expect(await stored('alice')).toHaveLength(1);
  });
});
