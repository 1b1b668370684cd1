import { describe, expect, it } from 'vitest';
import { OAuthBearerClient, OAuthBearerServer, oauthBearerFailureChallenge } from './oauthbearer.js';
import { XOAuth2Client, XOAuth2Server, xoauth2FailureChallenge } from './xoauth2.js';

const b = (s: string): Buffer => Buffer.from(s, 'utf8');
const TOKEN = 'ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg';

describe('XOAUTH2 server', () => {
  it("Google's format gives bearer credentials", async () => {
    expect(await new XOAuth2Server().step(b(`user=someuser@example.com\x01auth=Bearer ${TOKEN}\x01\x01`))).toEqual({
      kind: 'credentials',
      credentials: { kind: 'bearer', username: 'someuser@example.com', token: TOKEN },
    });
  });

  it('without an initial response it asks with an empty challenge; the scheme name is case-insensitive', async () => {
    const s = new XOAuth2Server();
    expect(await s.step(null)).toEqual({ kind: 'challenge', data: Buffer.alloc(0) });
    expect(await s.step(b(`auth=bearer ${TOKEN}\x01user=u\x01\x01`))).toMatchObject({ kind: 'credentials', credentials: { username: 'u' } });
  });

  it.each([
    ['missing final separator', `user=u\x01auth=Bearer ${TOKEN}\x01`],
    ['no user', `auth=Bearer ${TOKEN}\x01\x01`],
    ['empty user', `user=\x01auth=Bearer ${TOKEN}\x01\x01`],
    ['no auth', 'user=u\x01\x01'],
    ['other scheme', 'user=u\x01auth=Basic dTpw\x01\x01'],
    ['empty token', 'user=u\x01auth=Bearer \x01\x01'],
    ['token with a space', 'user=u\x01auth=Bearer a b\x01\x01'],
    ['CR in user', `user=u\r\x01auth=Bearer ${TOKEN}\x01\x01`],
    ['duplicate key', `user=u\x01user=v\x01auth=Bearer ${TOKEN}\x01\x01`],
    ['empty', ''],
  ])('%s → fail', async (_name, msg) => {
    expect(await new XOAuth2Server().step(b(msg))).toMatchObject({ kind: 'fail' });
  });

  it('one round only', async () => {
    const s = new XOAuth2Server();
    await s.step(b(`user=u\x01auth=Bearer ${TOKEN}\x01\x01`));
    expect(await s.step(b(`user=u\x01auth=Bearer ${TOKEN}\x01\x01`))).toMatchObject({ kind: 'fail' });
  });

  it('failure challenge is JSON', () => {
    expect(JSON.parse(xoauth2FailureChallenge().toString())).toEqual({ status: '401', schemes: 'bearer' });
    expect(JSON.parse(xoauth2FailureChallenge('https://mail.example/').toString())).toMatchObject({ scope: 'https://mail.example/' });
  });
});

describe('XOAUTH2 client', () => {
  it('sends the Google format and acknowledges an error with an empty response', () => {
    const c = new XOAuth2Client('someuser@example.com', TOKEN);
    expect(c.initial().toString()).toBe(`user=someuser@example.com\x01auth=Bearer ${TOKEN}\x01\x01`);
    expect(c.respond(xoauth2FailureChallenge())).toEqual(Buffer.alloc(0));
    expect(c.serverError).toBe('{"status":"401","schemes":"bearer"}');
  });
  it('answers an empty first challenge with the message', () => {
    expect(new XOAuth2Client('u', TOKEN).respond(Buffer.alloc(0)).toString()).toMatch(/^user=u\x01/);
  });
  it('refuses bad input', () => {
    expect(() => new XOAuth2Client('u\x01', TOKEN)).toThrow(RangeError);
    expect(() => new XOAuth2Client('u', 'a b')).toThrow(RangeError);
  });
});

describe('OAUTHBEARER server (RFC 7628)', () => {
  it('RFC 7628 §4.1 style message', async () => {
    const msg = `n,a=user@example.com,\x01host=server.example.com\x01port=143\x01auth=Bearer ${TOKEN}\x01\x01`;
    expect(await new OAuthBearerServer().step(b(msg))).toEqual({
      kind: 'credentials',
      credentials: { kind: 'bearer', username: 'user@example.com', token: TOKEN },
    });
  });

  it('decodes the saslname in a= and accepts y', async () => {
    expect(await new OAuthBearerServer().step(b(`y,a=a=2Cb,\x01auth=Bearer ${TOKEN}\x01\x01`))).toMatchObject({
      kind: 'credentials',
      credentials: { username: 'a,b' },
    });
  });

  it('without an initial response it asks with an empty challenge', async () => {
    const s = new OAuthBearerServer();
    expect(await s.step(null)).toEqual({ kind: 'challenge', data: Buffer.alloc(0) });
    expect(await s.step(b(`n,a=u,\x01auth=Bearer ${TOKEN}\x01\x01`))).toMatchObject({ kind: 'credentials' });
  });

  it.each([
    ['channel binding', `p=tls-unique,a=u,\x01auth=Bearer ${TOKEN}\x01\x01`],
    ['no a=', `n,,\x01auth=Bearer ${TOKEN}\x01\x01`],
    ['bad gs2 flag', `x,a=u,\x01auth=Bearer ${TOKEN}\x01\x01`],
    ['bad saslname', `n,a=u=41,\x01auth=Bearer ${TOKEN}\x01\x01`],
    ['no leading kvsep', `n,a=u,auth=Bearer ${TOKEN}\x01\x01`],
    ['no auth', 'n,a=u,\x01host=h\x01\x01'],
    ['no kv pairs at all', 'n,a=u,\x01\x01'],
    ['missing final kvsep', `n,a=u,\x01auth=Bearer ${TOKEN}\x01`],
    ['non-alpha key', `n,a=u,\x01ho-st=h\x01auth=Bearer ${TOKEN}\x01\x01`],
    ['CR in value', `n,a=u,\x01host=h\r\x01auth=Bearer ${TOKEN}\x01\x01`],
    ['the error acknowledgement as a first message', '\x01'],
  ])('%s → fail', async (_name, msg) => {
    expect(await new OAuthBearerServer().step(b(msg))).toMatchObject({ kind: 'fail' });
  });

  it('failure challenge is RFC 7628 §3.2.2 JSON', () => {
    expect(JSON.parse(oauthBearerFailureChallenge().toString())).toEqual({ status: 'invalid_token' });
    expect(JSON.parse(oauthBearerFailureChallenge({ scope: 'mail', 'openid-configuration': 'https://x/.well-known/openid-configuration' }).toString())).toEqual({
      status: 'invalid_token',
      scope: 'mail',
      'openid-configuration': 'https://x/.well-known/openid-configuration',
    });
  });
});

describe('OAUTHBEARER client', () => {
  it('builds the message and answers an error with \\x01', async () => {
    const c = new OAuthBearerClient('user@example.com', TOKEN, { host: 'server.example.com', port: 995 });
    const msg = c.initial();
    expect(msg.toString()).toBe(`n,a=user@example.com,\x01host=server.example.com\x01port=995\x01auth=Bearer ${TOKEN}\x01\x01`);
    expect(c.respond(oauthBearerFailureChallenge())).toEqual(Buffer.from([1]));
    expect(c.serverError).toBe('{"status":"invalid_token"}');
    // and the server understands it
    expect(await new OAuthBearerServer().step(msg)).toMatchObject({ kind: 'credentials', credentials: { username: 'user@example.com' } });
  });
  it('escapes the user name and can omit host and port', () => {
    expect(new OAuthBearerClient('a,b=c', TOKEN).initial().toString()).toBe(`n,a=a=2Cb=3Dc,\x01auth=Bearer ${TOKEN}\x01\x01`);
  });
  it('refuses bad input', () => {
    expect(() => new OAuthBearerClient('', TOKEN)).toThrow(RangeError);
    expect(() => new OAuthBearerClient('u', 'bad token')).toThrow(RangeError);
    expect(() => new OAuthBearerClient('u', TOKEN, { host: 'a\x01b' })).toThrow(RangeError);
  });
});
