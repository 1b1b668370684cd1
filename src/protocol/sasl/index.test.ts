import { describe, expect, it } from 'vitest';
import {
  CLIENT_MECHANISMS,
  DEFAULT_ENABLED_MECHANISMS,
  SERVER_MECHANISMS,
  SERVER_MECHANISM_NAMES,
  clientMechanism,
  serverMechanisms,
  type ClientMechanism,
  type SaslServerContext,
  type ServerStep,
} from './index.js';

const CB = Buffer.alloc(32, 9);

function ctx(o: { tls?: boolean; cert?: string } = {}): SaslServerContext {
  return {
    lookupSecret: async (u) => (u === 'alice' ? '{PLAIN}secret' : undefined),
    channelBinding: (t) => (o.tls && t === 'tls-exporter' ? CB : undefined),
    channelBindingType: o.tls ? 'tls-exporter' : undefined,
    hostname: 'pop.example.org',
    certificateIdentity: o.cert,
  };
}

/** Drives a client against a registry mechanism the way the session does (including the final `+ v=` round). */
async function drive(name: string, c: SaslServerContext, client: ClientMechanism): Promise<ServerStep> {
  const info = SERVER_MECHANISMS.find((m) => m.name === name);
  if (!info) throw new Error(`no ${name}`);
  const mech = info.create(c);
  let step = await mech.step(client.initial());
  for (let i = 0; i < 5 && step.kind === 'challenge'; i++) step = await mech.step(client.respond(step.data));
  if (step.kind === 'authenticated' && step.final) expect(client.respond(step.final)).toEqual(Buffer.alloc(0));
  return step;
}

describe('registry', () => {
  it('order (CAPA order), plaintext flags and availability', () => {
    expect(SERVER_MECHANISMS.map((m) => m.name)).toEqual([
      'EXTERNAL',
      'SCRAM-SHA-256-PLUS',
      'SCRAM-SHA-1-PLUS',
      'SCRAM-SHA-256',
      'SCRAM-SHA-1',
      'CRAM-MD5',
      'OAUTHBEARER',
      'XOAUTH2',
      'PLAIN',
      'LOGIN',
    ]);
    const plaintext = SERVER_MECHANISMS.filter((m) => m.plaintext).map((m) => m.name);
    expect(plaintext).toEqual(['OAUTHBEARER', 'XOAUTH2', 'PLAIN', 'LOGIN']);
    const offered = (c: SaslServerContext): string[] => SERVER_MECHANISMS.filter((m) => m.available?.(c) ?? true).map((m) => m.name);
    expect(offered(ctx())).toEqual(['SCRAM-SHA-256', 'SCRAM-SHA-1', 'CRAM-MD5', 'OAUTHBEARER', 'XOAUTH2', 'PLAIN', 'LOGIN']);
    expect(offered(ctx({ tls: true, cert: 'alice' }))).toEqual(SERVER_MECHANISMS.map((m) => m.name));
    expect(SERVER_MECHANISMS.filter((m) => m.failureChallenge).map((m) => m.name)).toEqual(['OAUTHBEARER', 'XOAUTH2']);
  });

  it('failure challenges', () => {
    const get = (n: string): string => SERVER_MECHANISMS.find((m) => m.name === n)?.failureChallenge?.().toString() ?? '';
    expect(JSON.parse(get('OAUTHBEARER'))).toEqual({ status: 'invalid_token' });
    expect(JSON.parse(get('XOAUTH2'))).toEqual({ status: '401', schemes: 'bearer' });
    const custom = serverMechanisms({ oauthScope: 'mail', openidConfiguration: 'https://idp/.well-known/openid-configuration' });
    expect(JSON.parse(custom.find((m) => m.name === 'OAUTHBEARER')?.failureChallenge?.().toString() ?? '')).toEqual({
      status: 'invalid_token',
      scope: 'mail',
      'openid-configuration': 'https://idp/.well-known/openid-configuration',
    });
  });

  it('channelBinding: false drops -PLUS and lets plain SCRAM accept `y`', async () => {
    const list = serverMechanisms({ channelBinding: false });
    expect(list.map((m) => m.name)).not.toContain('SCRAM-SHA-256-PLUS');
    const y = Buffer.from('y,,n=alice,r=abc');
    expect((await list.find((m) => m.name === 'SCRAM-SHA-256')?.create(ctx({ tls: true })).step(y))?.kind).toBe('challenge');
    expect((await SERVER_MECHANISMS.find((m) => m.name === 'SCRAM-SHA-256')?.create(ctx({ tls: true })).step(y))?.kind).toBe('fail');
  });

  it('enabled picks mechanisms (any case, registry order kept) and refuses unknown names', () => {
    expect(serverMechanisms({ enabled: ['login', 'SCRAM-SHA-256', 'plain'] }).map((m) => m.name)).toEqual(['SCRAM-SHA-256', 'PLAIN', 'LOGIN']);
    expect(serverMechanisms({ enabled: DEFAULT_ENABLED_MECHANISMS }).map((m) => m.name)).toEqual(['EXTERNAL', 'PLAIN', 'LOGIN']);
    expect(() => serverMechanisms({ enabled: ['PLAIN', 'DIGEST-MD5'] })).toThrow(RangeError);
    expect(SERVER_MECHANISMS.map((m) => m.name)).toEqual(SERVER_MECHANISM_NAMES);
  });

  it('scramIterations and saltSecret are passed on', async () => {
    const list = serverMechanisms({ scramIterations: 8192, saltSecret: Buffer.alloc(32, 1) });
    const first = await list.find((m) => m.name === 'SCRAM-SHA-1')?.create(ctx()).step(Buffer.from('n,,n=alice,r=abc'));
    expect(first?.kind === 'challenge' && first.data.toString()).toMatch(/,i=8192$/);
    expect(() => serverMechanisms({ scramIterations: 100 })).toThrow(RangeError);
  });
});

describe('clientMechanism() against the registry', () => {
  const opts = { username: 'alice', password: 'secret', token: 'tok' };
  it.each(['SCRAM-SHA-256', 'SCRAM-SHA-1', 'CRAM-MD5'])('%s authenticates', async (name) => {
    expect(await drive(name, ctx(), clientMechanism(name, opts))).toMatchObject({ kind: 'authenticated', username: 'alice' });
    expect(await drive(name, ctx(), clientMechanism(name, { ...opts, password: 'wrong' }))).toMatchObject({ kind: 'fail', username: 'alice' });
  });

  it.each(['SCRAM-SHA-256-PLUS', 'SCRAM-SHA-1-PLUS'])('%s authenticates with channel binding', async (name) => {
    const cl = clientMechanism(name, { ...opts, channelBinding: { type: 'tls-exporter', data: CB } });
    expect(cl.name).toBe(name);
    expect(await drive(name, ctx({ tls: true }), cl)).toMatchObject({ kind: 'authenticated', username: 'alice' });
  });

  it('EXTERNAL', async () => {
    expect(await drive('EXTERNAL', ctx({ cert: 'alice' }), clientMechanism('external', {}))).toEqual({ kind: 'authenticated', username: 'alice' });
  });

  it.each(['PLAIN', 'LOGIN'])('%s yields password credentials', async (name) => {
    expect(await drive(name, ctx(), clientMechanism(name, opts))).toMatchObject({
      kind: 'credentials',
      credentials: { kind: 'password', username: 'alice', password: 'secret' },
    });
  });

  it.each(['XOAUTH2', 'OAUTHBEARER'])('%s yields bearer credentials', async (name) => {
    expect(await drive(name, ctx(), clientMechanism(name, opts))).toEqual({
      kind: 'credentials',
      credentials: { kind: 'bearer', username: 'alice', token: 'tok' },
    });
  });

  it('knows every mechanism it advertises and refuses unknown ones or missing options', () => {
    for (const n of CLIENT_MECHANISMS) {
      expect(clientMechanism(n, { ...opts, channelBinding: { type: 'tls-exporter', data: CB } }).name).toBe(n);
    }
    expect(new Set(CLIENT_MECHANISMS)).toEqual(new Set(SERVER_MECHANISMS.map((m) => m.name)));
    expect(() => clientMechanism('DIGEST-MD5', opts)).toThrow(TypeError);
    expect(() => clientMechanism('PLAIN', { username: 'a' })).toThrow(/password/);
    expect(() => clientMechanism('XOAUTH2', { username: 'a' })).toThrow(/token/);
    expect(() => clientMechanism('SCRAM-SHA-256-PLUS', opts)).toThrow(TypeError);
  });
});
