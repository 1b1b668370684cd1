import { execFileSync } from 'node:child_process';
import { describe, expect, it, vi } from 'vitest';
import { hashPassword } from '../../auth/schemes.js';
import type { SaslServerContext, ServerStep } from './mechanism.js';
import { ScramClient, ScramServer, scramPlusAvailable, type ScramAlgorithm, type ScramClientOptions, type ScramServerOptions } from './scram.js';
import { deriveScramSecret, formatScramSecret } from '../../secrets/scram-keys.js';
import { lacks } from '../../../test/helpers/peers.js';

const RFC5802 = {
  clientFirst: 'n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL',
  serverFirst: 'r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096',
  clientFinal: 'c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=',
  serverFinal: 'v=rmF9pqV8S7suAoZWja4dJRkFsKQ=',
  clientNonce: 'fyko+d2lbbFgONRv9qkxdawL',
  serverNonce: '3rfcNHYJY1ZVvWVs7j',
  salt: 'QSXCR+Q6sek8bf92',
};
const RFC7677 = {
  clientFirst: 'n,,n=user,r=rOprNGfwEbeRWgbNEkqO',
  serverFirst: 'r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096',
  clientFinal: 'c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=',
  serverFinal: 'v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=',
  clientNonce: 'rOprNGfwEbeRWgbNEkqO',
  serverNonce: '%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0',
  salt: 'W22ZaJ0SNY7soEsUEjb6gQ==',
};
/** doveadm pw -s SCRAM-SHA-256 -p pencil / -s SCRAM-SHA-1 -p pencil (Dovecot 2.3) */
const DOVECOT_256 =
  '{SCRAM-SHA-256}4096,9dVGD1GbVU9HrgNSKKdU0w==,k+Hz/ml5Wv2SdF3brKZ3w9LBWLLQCeCi3Q1DTu13pXg=,qQIa620M30ij5gUntCXz22/AyOAWMLQFaWj/hJMwSYo=';
const DOVECOT_1 = '{SCRAM-SHA-1}4096,3fd54XLmY5DOLdKKVmEvgA==,6NxPABuYT+KKCW37FicNcJJxQYQ=,jEWNcOEkdpwGTwRhfLeO0ThZzAo=';

const CB = Buffer.from('0123456789abcdef0123456789abcdef');

interface Ctx extends SaslServerContext {
  lookupSecret: ReturnType<typeof vi.fn<(u: string) => Promise<string | undefined>>>;
}

function ctx(secrets: Record<string, string>, tls: { type?: 'tls-unique' | 'tls-exporter'; data?: Buffer } = {}): Ctx {
  return {
    lookupSecret: vi.fn(async (u: string) => secrets[u]),
    channelBinding: (t) => (t === tls.type ? tls.data : undefined),
    channelBindingType: tls.type,
    hostname: 'pop.example.org',
    certificateIdentity: undefined,
  };
}

const b = (s: string): Buffer => Buffer.from(s, 'utf8');
const str = (st: ServerStep): string => (st.kind === 'challenge' ? st.data.toString('utf8') : `<${st.kind}: ${'reason' in st ? st.reason : ''}>`);

function server(c: SaslServerContext, o: Partial<ScramServerOptions> = {}): ScramServer {
  return new ScramServer(c, { algorithm: 'SHA-256', plus: false, ...o });
}

/** Runs a full exchange between our client and server. */
async function exchange(s: ScramServer, client: ScramClient): Promise<{ result: ServerStep; client: ScramClient }> {
  const first = await s.step(client.initial());
  if (first.kind !== 'challenge') return { result: first, client };
  const final = await s.step(client.respond(first.data));
  if (final.kind === 'authenticated' && final.final) expect(client.respond(final.final).length).toBe(0);
  return { result: final, client };
}

function client(o: Partial<ScramClientOptions> = {}): ScramClient {
  return new ScramClient({ algorithm: 'SHA-256', username: 'user', password: 'pencil', ...o });
}

describe.each([
  ['SHA-1', RFC5802],
  ['SHA-256', RFC7677],
] as const)('SCRAM-%s RFC vector', (algorithm: ScramAlgorithm, v) => {
  const salt = (): Buffer => Buffer.from(v.salt, 'base64');

  it('server reproduces it from a {PLAIN} secret', async () => {
    const s = server(ctx({ user: '{PLAIN}pencil' }), { algorithm, nonce: v.serverNonce, salt });
    expect(str(await s.step(b(v.clientFirst)))).toBe(v.serverFirst);
    expect(await s.step(b(v.clientFinal))).toEqual({ kind: 'authenticated', username: 'user', final: b(v.serverFinal) });
  });

  it('server reproduces it from a Dovecot-format stored secret', async () => {
    const hash = algorithm === 'SHA-1' ? 'sha1' : 'sha256';
    const stored = `{SCRAM-${algorithm}}${formatScramSecret(await deriveScramSecret(hash, 'pencil', salt(), 4096))}`;
    const s = server(ctx({ user: stored }), { algorithm, nonce: v.serverNonce });
    expect(str(await s.step(b(v.clientFirst)))).toBe(v.serverFirst);
    expect(await s.step(b(v.clientFinal))).toEqual({ kind: 'authenticated', username: 'user', final: b(v.serverFinal) });
  });

  it('server answers an empty challenge first when there is no initial response', async () => {
    const s = server(ctx({ user: '{PLAIN}pencil' }), { algorithm, nonce: v.serverNonce, salt });
    expect(await s.step(null)).toEqual({ kind: 'challenge', data: Buffer.alloc(0) });
    expect(str(await s.step(b(v.clientFirst)))).toBe(v.serverFirst);
    expect(await s.step(b(v.clientFinal))).toMatchObject({ kind: 'authenticated' });
  });

  it('client reproduces it and verifies the server signature', () => {
    const c = new ScramClient({ algorithm, username: 'user', password: 'pencil', nonce: v.clientNonce });
    expect(c.name).toBe(`SCRAM-${algorithm}`);
    expect(c.initial().toString()).toBe(v.clientFirst);
    expect(c.respond(b(v.serverFirst)).toString()).toBe(v.clientFinal);
    expect(c.verified).toBe(false);
    expect(c.respond(b(v.serverFinal))).toEqual(Buffer.alloc(0));
    expect(c.verified).toBe(true);
  });

  it('client sends client-first after an empty challenge', () => {
    const c = new ScramClient({ algorithm, username: 'user', password: 'pencil', nonce: v.clientNonce });
    expect(c.respond(Buffer.alloc(0)).toString()).toBe(v.clientFirst);
  });

  it('client throws on a wrong server signature or a server error', () => {
    const c = new ScramClient({ algorithm, username: 'user', password: 'pencil', nonce: v.clientNonce });
    c.initial();
    c.respond(b(v.serverFirst));
    expect(() => c.respond(b(v.serverFinal.replace(/.=$/, 'A=')))).toThrow(/signature/);
    expect(c.verified).toBe(false);
    const d = new ScramClient({ algorithm, username: 'user', password: 'pencil', nonce: v.clientNonce });
    d.initial();
    d.respond(b(v.serverFirst));
    expect(() => d.respond(b('e=invalid-proof'))).toThrow(/invalid-proof/);
  });
});

describe('SCRAM server: stored secrets', () => {
  it('Dovecot-generated {SCRAM-SHA-256} and {SCRAM-SHA-1} secrets', async () => {
    expect((await exchange(server(ctx({ user: DOVECOT_256 })), client())).result).toMatchObject({ kind: 'authenticated', username: 'user' });
    expect((await exchange(server(ctx({ user: DOVECOT_1 }), { algorithm: 'SHA-1' }), client({ algorithm: 'SHA-1' }))).result).toMatchObject({
      kind: 'authenticated',
    });
    // The stored salt and iteration count are what the server announces.
    const first = await server(ctx({ user: DOVECOT_256 })).step(b('n,,n=user,r=abc'));
    expect(str(first)).toMatch(/^r=abc[^,]+,s=9dVGD1GbVU9HrgNSKKdU0w==,i=4096$/);
  });

  it('a wrong password fails at the proof with the user name', async () => {
    for (const stored of [DOVECOT_256, '{PLAIN}pencil']) {
      const { result, client: c } = await exchange(server(ctx({ user: stored })), client({ password: 'pencil2' }));
      expect(result).toMatchObject({ kind: 'fail', username: 'user' });
      expect(c.verified).toBe(false);
    }
  });

  it('a secret for the other hash, or one that cannot serve SCRAM, fails like an unknown user', async () => {
    for (const stored of [DOVECOT_1, '{SSHA512}abcd', '{SCRAM-SHA-256}1000,c2FsdA==,AAAA,AAAA', '{SCRAM-SHA-256}garbage']) {
      const { result } = await exchange(server(ctx({ user: stored })), client());
      expect(result, stored).toMatchObject({ kind: 'fail', username: 'user' });
    }
  });

  it('secrets made by hashPassword work (both hashes, custom iterations)', async () => {
    const s256 = await hashPassword('pencil', 'SCRAM-SHA-256', { scramIterations: 5000 });
    expect(s256).toMatch(/^\{SCRAM-SHA-256\}5000,/);
    expect((await exchange(server(ctx({ user: s256 })), client())).result).toMatchObject({ kind: 'authenticated' });
    const s1 = await hashPassword('pencil', 'SCRAM-SHA-1');
    expect((await exchange(server(ctx({ user: s1 }), { algorithm: 'SHA-1' }), client({ algorithm: 'SHA-1' }))).result).toMatchObject({
      kind: 'authenticated',
    });
  });

  it('{PLAIN}-family secrets of every encoding', async () => {
    for (const stored of ['{CLEAR}pencil', '{PLAIN.B64}cGVuY2ls', '{CLEARTEXT.HEX}70656e63696c']) {
      expect((await exchange(server(ctx({ user: stored })), client())).result, stored).toMatchObject({ kind: 'authenticated' });
    }
  });

  it('a failing secret lookup is a temporary failure', async () => {
    const c = ctx({});
    c.lookupSecret.mockRejectedValueOnce(new Error('down'));
    expect(await server(c).step(b('n,,n=user,r=abc'))).toMatchObject({ kind: 'fail', temporary: true, username: 'user' });
  });
});

describe('SCRAM server: unknown users are indistinguishable at server-first', () => {
  const SHAPE = /^r=abc[A-Za-z0-9+/]{24},s=[A-Za-z0-9+/]{22}==,i=4096$/;
  const salt = (st: ServerStep): string => /s=([^,]+)/.exec(str(st))?.[1] ?? '';
  const secret = Buffer.alloc(32, 7);

  it('same shape, stable per user, different between users, and fail at the proof', async () => {
    const c = ctx({ known: '{PLAIN}pencil' });
    const known1 = await server(c, { saltSecret: secret }).step(b('n,,n=known,r=abc'));
    const known2 = await server(c, { saltSecret: secret }).step(b('n,,n=known,r=abc'));
    const unknown1 = await server(c, { saltSecret: secret }).step(b('n,,n=ghost,r=abc'));
    const unknown2 = await server(c, { saltSecret: secret }).step(b('n,,n=ghost,r=abc'));
    const other = await server(c, { saltSecret: secret }).step(b('n,,n=ghost2,r=abc'));
    for (const st of [known1, known2, unknown1, unknown2, other]) expect(str(st)).toMatch(SHAPE);
    expect(salt(known1)).toBe(salt(known2));
    expect(salt(unknown1)).toBe(salt(unknown2));
    expect(salt(unknown1)).not.toBe(salt(other));
    expect(salt(unknown1)).not.toBe(salt(known1));
    // Another server secret gives other salts (and a restart with the same secret the same ones).
    expect(salt(await server(c, { saltSecret: Buffer.alloc(32, 8) }).step(b('n,,n=ghost,r=abc')))).not.toBe(salt(unknown1));
    expect(salt(await server(c, { saltSecret: Buffer.from(secret) }).step(b('n,,n=ghost,r=abc')))).toBe(salt(unknown1));
    expect(c.lookupSecret).toHaveBeenCalledWith('ghost');

    const { result } = await exchange(server(c, { saltSecret: secret }), client({ username: 'ghost' }));
    expect(result).toMatchObject({ kind: 'fail', username: 'ghost' });
  });

  it('the server nonce is fresh each time', async () => {
    const c = ctx({});
    const a = str(await server(c).step(b('n,,n=ghost,r=abc')));
    const d = str(await server(c).step(b('n,,n=ghost,r=abc')));
    expect(a.split(',')[0]).not.toBe(d.split(',')[0]);
  });
});

describe('SCRAM server: wire-level errors', () => {
  const c = ctx({ user: '{PLAIN}pencil', 'a,b=c': '{PLAIN}pencil', IX: '{PLAIN}pencil' });

  it.each([
    ['unknown cb flag', 'x,,n=user,r=abc'],
    ['missing second comma', 'n,n=user,r=abc'],
    ['authzid without a=', 'n,b=user,n=user,r=abc'],
    ['empty', ''],
    ['mandatory extension', 'n,,m=ext,n=user,r=abc', 'mandatory extension not supported'],
    ['no nonce', 'n,,n=user'],
    ['attributes out of order', 'n,,r=abc,n=user'],
    ['empty nonce', 'n,,n=user,r='],
    ['nonce with a control character', 'n,,n=user,r=a\tb'],
    ['empty user', 'n,,n=,r=abc'],
    ['bad saslname escape', 'n,,n=us=41er,r=abc'],
    ['bare = in saslname', 'n,,n=a=b,r=abc'],
    ['prohibited character (SASLprep)', 'n,,n=us\u0007er,r=abc'],
    ['RandALCat bidi violation (SASLprep)', 'n,,n=\u0627a,r=abc'],
    ['bad extension', 'n,,n=user,r=abc,1x'],
    ['authzid mismatch', 'n,a=admin,n=user,r=abc', 'authzid differs from the user name'],
    ['channel binding on a non-PLUS mechanism', 'p=tls-exporter,,n=user,r=abc', 'channel binding requested on a non-PLUS mechanism'],
  ])('client-first: %s → fail', async (_name, msg, reason?: string) => {
    const fresh = ctx({ user: '{PLAIN}pencil' });
    const r = await server(fresh).step(b(msg));
    expect(r).toMatchObject({ kind: 'fail' });
    if (reason !== undefined) expect(r).toMatchObject({ reason });
    expect(fresh.lookupSecret).not.toHaveBeenCalled();
  });

  it('refuses client-first that is not UTF-8', async () => {
    expect(await server(c).step(Buffer.from([0x6e, 0x2c, 0x2c, 0x6e, 0x3d, 0xff, 0x2c, 0x72, 0x3d, 0x61]))).toMatchObject({ kind: 'fail' });
  });

  it('accepts an authzid equal to the user, and `y` when -PLUS is not offered', async () => {
    expect((await exchange(server(c), client({ authzid: 'user' }))).result).toMatchObject({ kind: 'authenticated', username: 'user' });
    const y = client({ channelBinding: { type: 'tls-exporter', data: CB } });
    expect(y.initial().toString()).toMatch(/^y,,n=user,r=/);
    expect((await exchange(server(c), client({ channelBinding: { type: 'tls-exporter', data: CB } }))).result).toMatchObject({
      kind: 'authenticated',
    });
  });

  it('saslname escapes: a user named "a,b=c"', async () => {
    const cl = client({ username: 'a,b=c' });
    expect(cl.initial().toString()).toMatch(/^n,,n=a=2Cb=3Dc,r=/);
    const { result } = await exchange(server(c), client({ username: 'a,b=c' }));
    expect(result).toMatchObject({ kind: 'authenticated', username: 'a,b=c' });
    expect(c.lookupSecret).toHaveBeenCalledWith('a,b=c');
  });

  it('SASLprep: I\\u00ADX is the user IX (server side and client side)', async () => {
    const s = server(c);
    const first = await s.step(b('n,,n=I\u00ADX,r=abc'));
    expect(first.kind).toBe('challenge');
    expect(c.lookupSecret).toHaveBeenLastCalledWith('IX');
    expect(client({ username: 'I\u00ADX' }).initial().toString()).toMatch(/^n,,n=IX,r=/);
    expect((await exchange(server(c), client({ username: 'I\u00ADX', password: 'pen\u00ADcil' }))).result).toMatchObject({
      kind: 'authenticated',
      username: 'IX',
    });
  });

  /** A correct client-final for nonce `r`, built by a real client (so only the mutation is wrong). */
  async function goodFinal(s: ScramServer): Promise<{ final: string; nonce: string }> {
    const cl = client({ nonce: 'abc' });
    const first = await s.step(cl.initial());
    if (first.kind !== 'challenge') throw new Error('no challenge');
    const nonce = first.data.toString().split(',')[0]?.slice(2) ?? '';
    return { final: cl.respond(first.data).toString(), nonce };
  }

  it('the unmodified client-final succeeds (control)', async () => {
    const s = server(c);
    const { final } = await goodFinal(s);
    expect(await s.step(b(final))).toMatchObject({ kind: 'authenticated' });
  });

  it.each([
    ['wrong nonce', 'nonce mismatch', (f: string, n: string) => f.replace(`r=${n}`, `r=${n}x`)],
    ['client nonce only', 'nonce mismatch', (f: string, n: string) => f.replace(`r=${n}`, 'r=abc')],
    ['wrong c= (other gs2 header)', 'channel binding mismatch', (f: string) => f.replace('c=biws', `c=${Buffer.from('y,,').toString('base64')}`)],
    ['c= not base64', 'channel binding mismatch', (f: string) => f.replace('c=biws', 'c=b!ws')],
    ['proof flipped', 'wrong proof', (f: string) => f.replace(/p=(.)/, (_m, ch: string) => `p=${ch === 'A' ? 'B' : 'A'}`)],
    ['proof too short', 'malformed proof', (f: string) => f.replace(/p=.*$/, 'p=AAAA')],
    ['no proof', 'malformed client-final-message', (f: string) => f.replace(/,p=.*$/, '')],
    ['proof not last', 'malformed proof', (f: string) => `${f},x=1`],
    ['attributes out of order', 'malformed client-final-message', (f: string) => f.replace(/^(c=[^,]*),(r=[^,]*)/, '$2,$1')],
    ['bad extension before p', 'malformed client-final-message', (f: string) => f.replace(',p=', ',1=2,p=')],
  ])('client-final: %s → fail (%s) with the user name', async (_name, reason, mutate) => {
    const s = server(c);
    const { final, nonce } = await goodFinal(s);
    expect(await s.step(b(mutate(final, nonce)))).toMatchObject({ kind: 'fail', username: 'user', reason });
  });

  it('an extension before p= is parsed and covered by the proof (AuthMessage includes it)', async () => {
    const cl = client({ nonce: 'abc' });
    const t = server(c);
    const first = await t.step(cl.initial());
    if (first.kind !== 'challenge') throw new Error('no challenge');
    const final = cl.respond(first.data).toString();
    // The client's proof was computed without the extension: the server reaches the proof check and refuses it.
    expect(await t.step(b(final.replace(',p=', ',x=ext,p=')))).toMatchObject({ kind: 'fail', reason: 'wrong proof' });
  });

  it('no steps after the end', async () => {
    const s = server(c);
    const cl = client();
    const { result } = await exchange(s, cl);
    expect(result.kind).toBe('authenticated');
    expect(await s.step(Buffer.alloc(0))).toMatchObject({ kind: 'fail' });
    const t = server(c);
    await t.step(null);
    expect(await t.step(null)).toMatchObject({ kind: 'fail' });
  });
});

describe('SCRAM -PLUS', () => {
  const secrets = { user: '{PLAIN}pencil' };
  const tls13 = ctx(secrets, { type: 'tls-exporter', data: CB });
  const tls12 = ctx(secrets, { type: 'tls-unique', data: CB });

  it('available only with a binding type and data', () => {
    expect(scramPlusAvailable(tls13)).toBe(true);
    expect(scramPlusAvailable(tls12)).toBe(true);
    expect(scramPlusAvailable(ctx(secrets))).toBe(false);
    expect(scramPlusAvailable(ctx(secrets, { type: 'tls-exporter' }))).toBe(false);
  });

  it.each([
    ['tls-exporter', tls13],
    ['tls-unique', tls12],
  ] as const)('binds with %s', async (type, c) => {
    const cl = client({ plus: true, channelBinding: { type, data: CB } });
    expect(cl.name).toBe('SCRAM-SHA-256-PLUS');
    const { result } = await exchange(server(c, { plus: true }), cl);
    expect(result).toMatchObject({ kind: 'authenticated', username: 'user' });
    expect(cl.verified).toBe(true);
    expect(client({ plus: true, channelBinding: { type, data: CB } }).initial().toString()).toMatch(new RegExp(`^p=${type},,n=user,r=`));
  });

  it('c= carries gs2 header + binding data', async () => {
    const cl = client({ plus: true, nonce: 'abc', channelBinding: { type: 'tls-exporter', data: CB } });
    const s = server(tls13, { plus: true });
    const first = await s.step(cl.initial());
    if (first.kind !== 'challenge') throw new Error('no challenge');
    const final = cl.respond(first.data).toString();
    const c = /^c=([^,]*)/.exec(final)?.[1] ?? '';
    expect(Buffer.from(c, 'base64')).toEqual(Buffer.concat([Buffer.from('p=tls-exporter,,'), CB]));
  });

  it('wrong binding data (a MITM) fails', async () => {
    const cl = client({ plus: true, channelBinding: { type: 'tls-exporter', data: Buffer.alloc(32) } });
    expect((await exchange(server(tls13, { plus: true }), cl)).result).toMatchObject({ kind: 'fail', reason: 'channel binding mismatch' });
  });

  it('a binding type the connection does not have fails (tls-unique on TLS 1.3)', async () => {
    const cl = client({ plus: true, channelBinding: { type: 'tls-unique', data: CB } });
    expect((await exchange(server(tls13, { plus: true }), cl)).result).toMatchObject({ kind: 'fail' });
  });

  it('-PLUS without p= fails; n and y both refused', async () => {
    expect(await server(tls13, { plus: true }).step(b('n,,n=user,r=abc'))).toMatchObject({ kind: 'fail' });
    expect(await server(tls13, { plus: true }).step(b('y,,n=user,r=abc'))).toMatchObject({ kind: 'fail' });
    expect(await server(tls13, { plus: true }).step(b('p=tls-server-end-point,,n=user,r=abc'))).toMatchObject({ kind: 'fail' });
  });

  it('non-PLUS: `y` while -PLUS is advertised is a downgrade and fails; `n` is fine', async () => {
    expect(await server(tls13, { plusAdvertised: true }).step(b('y,,n=user,r=abc'))).toMatchObject({ kind: 'fail' });
    expect((await server(tls13, { plusAdvertised: true }).step(b('n,,n=user,r=abc'))).kind).toBe('challenge');
    expect((await server(tls13, { plusAdvertised: false }).step(b('y,,n=user,r=abc'))).kind).toBe('challenge');
  });

  it('the client refuses -PLUS without binding data', () => {
    expect(() => client({ plus: true })).toThrow(TypeError);
  });
});

describe('SCRAM client: checks on the server', () => {
  function started(): ScramClient {
    const cl = client({ nonce: 'abc' });
    cl.initial();
    return cl;
  }
  it.each([
    ['nonce not extending ours', 'r=xyz123,s=QSXCR+Q6sek8bf92,i=4096'],
    ['nonce equal to ours', 'r=abc,s=QSXCR+Q6sek8bf92,i=4096'],
    ['too few iterations', 'r=abc123,s=QSXCR+Q6sek8bf92,i=1000'],
    ['absurd iterations', 'r=abc123,s=QSXCR+Q6sek8bf92,i=99999999999'],
    ['bad salt', 'r=abc123,s=***,i=4096'],
    ['empty salt', 'r=abc123,s=,i=4096'],
    ['mandatory extension', 'm=x,r=abc123,s=QSXCR+Q6sek8bf92,i=4096'],
    ['missing i', 'r=abc123,s=QSXCR+Q6sek8bf92'],
  ])('%s → throws', (_name, serverFirst) => {
    expect(() => started().respond(b(serverFirst))).toThrow();
  });

  it('refuses steps after the end and SASLprep-prohibited input', () => {
    const cl = client({ nonce: 'abc' });
    cl.initial();
    expect(() => cl.initial()).toThrow();
    expect(() => client({ username: 'a\u0007' })).toThrow(RangeError);
    expect(() => client({ password: 'a\u0007' })).toThrow(RangeError);
    expect(() => client({ nonce: 'a,b' })).toThrow(RangeError);
  });

  it('minIterations can be lowered for old servers', () => {
    const cl = client({ nonce: 'abc', minIterations: 1000 });
    cl.initial();
    expect(cl.respond(b('r=abc123,s=QSXCR+Q6sek8bf92,i=1000')).toString()).toMatch(/^c=biws,r=abc123,p=/);
  });
});

describe.skipIf(lacks('doveadm'))('SCRAM against doveadm', () => {
  it.each(['SHA-1', 'SHA-256'] as const)('a fresh doveadm {SCRAM-%s} secret authenticates our client', async (algorithm) => {
    for (const pw of ['pencil', 'pässwörd ✓']) {
      const stored = execFileSync('doveadm', ['pw', '-s', `SCRAM-${algorithm}`, '-p', pw], { encoding: 'utf8' }).trim();
      const ok = await exchange(server(ctx({ user: stored }), { algorithm }), client({ algorithm, password: pw }));
      expect(ok.result, pw).toMatchObject({ kind: 'authenticated' });
      expect(ok.client.verified).toBe(true);
      const bad = await exchange(server(ctx({ user: stored }), { algorithm }), client({ algorithm, password: `${pw}x` }));
      expect(bad.result).toMatchObject({ kind: 'fail' });
    }
  });
});
