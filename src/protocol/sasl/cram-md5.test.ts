import { execFileSync } from 'node:child_process';
import { describe, expect, it, vi } from 'vitest';
import { CramMd5Client, CramMd5Server, cramMd5Challenge, cramMd5States } from './cram-md5.js';
import type { SaslServerContext, ServerStep } from './mechanism.js';
import { lacks } from '../../../test/helpers/peers.js';

const RFC_CHALLENGE = '<1896.697170952@postoffice.reston.mci.net>';
const RFC_RESPONSE = 'tim b913a602c7eda7a495b4e6e7334d3890';
/** doveadm pw -s CRAM-MD5 -p tanstaaftanstaaf (Dovecot 2.3) */
const DOVECOT_TIM = '{CRAM-MD5}d06d4e1b26fccaa4b0b61801132340a354b21152711fb604ca3e035e7015116b';

function ctx(secrets: Record<string, string>): SaslServerContext & { lookupSecret: ReturnType<typeof vi.fn> } {
  return {
    lookupSecret: vi.fn(async (u: string) => secrets[u]),
    channelBinding: () => undefined,
    channelBindingType: undefined,
    hostname: 'pop.example.org',
    certificateIdentity: undefined,
  };
}

async function run(secrets: Record<string, string>, response: string | Buffer): Promise<ServerStep> {
  const s = new CramMd5Server(ctx(secrets), { challenge: RFC_CHALLENGE });
  const first = await s.step(null);
  expect(first).toEqual({ kind: 'challenge', data: Buffer.from(RFC_CHALLENGE) });
  return s.step(Buffer.isBuffer(response) ? response : Buffer.from(response, 'utf8'));
}

describe('CRAM-MD5 server', () => {
  it('RFC 2195 vector with a {PLAIN} secret', async () => {
    expect(await run({ tim: '{PLAIN}tanstaaftanstaaf' }, RFC_RESPONSE)).toEqual({ kind: 'authenticated', username: 'tim' });
  });

  it('RFC 2195 vector with a Dovecot {CRAM-MD5} secret (and its {HMAC-MD5} alias, any case)', async () => {
    expect(await run({ tim: DOVECOT_TIM }, RFC_RESPONSE)).toEqual({ kind: 'authenticated', username: 'tim' });
    expect(await run({ tim: DOVECOT_TIM.replace('CRAM-MD5', 'hmac-md5') }, RFC_RESPONSE)).toMatchObject({ kind: 'authenticated' });
  });

  it('works with the other cleartext schemes', async () => {
    for (const stored of ['{CLEAR}tanstaaftanstaaf', '{CLEARTEXT}tanstaaftanstaaf', '{PLAIN.B64}dGFuc3RhYWZ0YW5zdGFhZg==', '{plain.hex}74616e737461616674616e7374616166']) {
      expect(await run({ tim: stored }, RFC_RESPONSE), stored).toMatchObject({ kind: 'authenticated', username: 'tim' });
    }
  });

  it('accepts an upper-case hex digest', async () => {
    expect(await run({ tim: DOVECOT_TIM }, RFC_RESPONSE.toUpperCase().replace('TIM', 'tim'))).toMatchObject({ kind: 'authenticated' });
  });

  it('a wrong digest fails with the user name', async () => {
    expect(await run({ tim: DOVECOT_TIM }, 'tim b913a602c7eda7a495b4e6e7334d3891')).toMatchObject({ kind: 'fail', username: 'tim' });
  });

  it('unknown users and secrets that cannot serve CRAM-MD5 fail the same way, after a lookup', async () => {
    for (const secrets of [{}, { tim: '{SHA512-CRYPT}$6$abc$def' }, { tim: '{CRAM-MD5}nothex' }]) {
      const c = ctx(secrets);
      const s = new CramMd5Server(c, { challenge: RFC_CHALLENGE });
      await s.step(null);
      const r = await s.step(Buffer.from(RFC_RESPONSE));
      expect(r).toMatchObject({ kind: 'fail', username: 'tim' });
      expect(c.lookupSecret).toHaveBeenCalledWith('tim');
    }
  });

  it('user names with spaces: the digest is after the last space', async () => {
    const client = new CramMd5Client('tim smith', 'tanstaaftanstaaf');
    expect(await run({ 'tim smith': '{PLAIN}tanstaaftanstaaf' }, client.respond(Buffer.from(RFC_CHALLENGE)))).toEqual({
      kind: 'authenticated',
      username: 'tim smith',
    });
  });

  it('refuses an initial response, malformed answers and extra steps', async () => {
    const s = new CramMd5Server(ctx({}));
    expect(await s.step(Buffer.alloc(0))).toMatchObject({ kind: 'fail' });
    for (const bad of ['tim', ' b913a602c7eda7a495b4e6e7334d3890', 'tim b913', 'tim\r b913a602c7eda7a495b4e6e7334d3890', Buffer.from([0xff, 0x20, 0x61])]) {
      expect(await run({ tim: DOVECOT_TIM }, bad), String(bad)).toMatchObject({ kind: 'fail' });
    }
    const t = new CramMd5Server(ctx({ tim: DOVECOT_TIM }), { challenge: RFC_CHALLENGE });
    await t.step(null);
    await t.step(Buffer.from(RFC_RESPONSE));
    expect(await t.step(Buffer.from(RFC_RESPONSE))).toMatchObject({ kind: 'fail' });
  });

  it('a failing secret lookup is a temporary failure', async () => {
    const c = ctx({});
    c.lookupSecret.mockRejectedValueOnce(new Error('db down'));
    const s = new CramMd5Server(c, { challenge: RFC_CHALLENGE });
    await s.step(null);
    expect(await s.step(Buffer.from(RFC_RESPONSE))).toMatchObject({ kind: 'fail', temporary: true, username: 'tim' });
  });

  it('challenges look like <random.timestamp@host> and differ each time', async () => {
    const a = cramMd5Challenge('pop.example.org');
    expect(a).toMatch(/^<\d+\.\d+@pop\.example\.org>$/);
    expect(cramMd5Challenge('pop.example.org')).not.toBe(a);
    expect(cramMd5Challenge('bad host<>')).toMatch(/@badhost>$/);
    const first = await new CramMd5Server(ctx({})).step(null);
    expect(first.kind === 'challenge' && first.data.toString()).toMatch(/^<\d+\.\d+@pop\.example\.org>$/);
  });

  it('cramMd5States accepts only usable secrets', () => {
    expect(cramMd5States(undefined)).toBeUndefined();
    expect(cramMd5States('{SSHA}abc')).toBeUndefined();
    expect(cramMd5States('{PLAIN}x')).toBeDefined();
  });
});

describe('CRAM-MD5 client', () => {
  it('RFC 2195 vector', () => {
    const c = new CramMd5Client('tim', 'tanstaaftanstaaf');
    expect(c.initial()).toBeNull();
    expect(c.respond(Buffer.from(RFC_CHALLENGE)).toString()).toBe(RFC_RESPONSE);
  });
});

describe.skipIf(lacks('doveadm'))('CRAM-MD5 against doveadm', () => {
  it('a freshly generated {CRAM-MD5} secret serves the RFC exchange and other passwords', async () => {
    for (const pw of ['tanstaaftanstaaf', 'pässwörd', 'x'.repeat(100)]) {
      const stored = execFileSync('doveadm', ['pw', '-s', 'CRAM-MD5', '-p', pw], { encoding: 'utf8' }).trim();
      const client = new CramMd5Client('tim', pw);
      expect(await run({ tim: stored }, client.respond(Buffer.from(RFC_CHALLENGE))), pw).toMatchObject({ kind: 'authenticated' });
      expect(await run({ tim: stored }, new CramMd5Client('tim', `${pw}!`).respond(Buffer.from(RFC_CHALLENGE)))).toMatchObject({ kind: 'fail' });
    }
  });
});
