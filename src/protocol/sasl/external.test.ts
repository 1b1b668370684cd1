import { describe, expect, it } from 'vitest';
import { ExternalClient, ExternalServer, externalAvailable } from './external.js';
import type { SaslServerContext } from './mechanism.js';

function ctx(certificateIdentity: string | undefined): SaslServerContext {
  return {
    lookupSecret: async () => undefined,
    channelBinding: () => undefined,
    channelBindingType: undefined,
    hostname: 'pop.example.org',
    certificateIdentity,
  };
}

describe('EXTERNAL', () => {
  it('is available only with a certificate identity', () => {
    expect(externalAvailable(ctx('alice'))).toBe(true);
    expect(externalAvailable(ctx(undefined))).toBe(false);
    expect(externalAvailable(ctx(''))).toBe(false);
  });

  it('an empty authzid (initial response "=") logs in as the certificate identity', async () => {
    expect(await new ExternalServer(ctx('alice')).step(Buffer.alloc(0))).toEqual({ kind: 'authenticated', username: 'alice' });
  });

  it('without an initial response: empty challenge, then the authzid', async () => {
    const s = new ExternalServer(ctx('alice'));
    expect(await s.step(null)).toEqual({ kind: 'challenge', data: Buffer.alloc(0) });
    expect(await s.step(Buffer.from('alice'))).toEqual({ kind: 'authenticated', username: 'alice' });
  });

  it('a different authzid, no certificate, or bad bytes fail', async () => {
    expect(await new ExternalServer(ctx('alice')).step(Buffer.from('bob'))).toMatchObject({ kind: 'fail', username: 'bob' });
    expect(await new ExternalServer(ctx('alice')).step(Buffer.from('Alice'))).toMatchObject({ kind: 'fail' });
    expect(await new ExternalServer(ctx(undefined)).step(Buffer.alloc(0))).toMatchObject({ kind: 'fail' });
    expect(await new ExternalServer(ctx('alice')).step(Buffer.from('alice\n'))).toMatchObject({ kind: 'fail' });
    expect(await new ExternalServer(ctx('alice')).step(Buffer.from([0xff]))).toMatchObject({ kind: 'fail' });
    const s = new ExternalServer(ctx('alice'));
    await s.step(Buffer.alloc(0));
    expect(await s.step(Buffer.alloc(0))).toMatchObject({ kind: 'fail' });
  });

  it('client sends the authzid (default empty)', () => {
    expect(new ExternalClient().initial()).toEqual(Buffer.alloc(0));
    expect(new ExternalClient('alice').respond().toString()).toBe('alice');
  });
});
