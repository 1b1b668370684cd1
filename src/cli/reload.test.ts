import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../config/load.js';
import { matchServerName } from '../config/sni.js';
import { changedSettings } from './reload.js';

describe('changedSettings', () => {
  let dir: string;
  const load = async (toml: string) => {
    await fs.writeFile(path.join(dir, 'p.toml'), toml);
    return loadConfig({ config: path.join(dir, 'p.toml') });
  };
  beforeAll(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-changed-'));
  });
  afterAll(async () => {
    await fs.rm(dir, { recursive: true, force: true });
  });

  it('splits what SIGHUP applies from what needs a restart, by dotted name', async () => {
    const old = await load('[server]\nmax_connections = 10\n');
    const fresh = await load(
      [
        'log_level = "debug"',
        'log_format = "json"',
        '[server]',
        'max_connections = 20',
        'listen = ["127.0.0.1:2110"]',
        'sasl_mechanisms = ["PLAIN"]',
        'proxy_protocol = true',
        'trusted_proxies = ["10.0.0.1"]',
        '[[tls.sni]]',
        'name = "*.example.org"',
        'cert = "a.pem"',
        'key = "a.key"',
        '[store]',
        'fsync = false',
        '[lmtp]',
        'listen = ["127.0.0.1:2424"]',
        '[auth]',
        'users = "other-users"',
      ].join('\n'),
    );
    expect(changedSettings(old, fresh)).toEqual({
      applied: ['auth.users', 'log_level', 'server.max_connections', 'server.sasl_mechanisms', 'tls.sni'],
      needRestart: ['lmtp.listen', 'log_format', 'server.listen', 'server.proxy_protocol', 'server.trusted_proxies', 'store.fsync'],
    });
    expect(changedSettings(old, await load('[server]\nmax_connections = 10\n'))).toEqual({ applied: [], needRestart: [] });
  });
});

describe('matchServerName', () => {
  const entries = [{ name: 'pop.example.org' }, { name: '*.example.org' }, { name: '*.Example.NET' }];
  it('exact names first, then a wildcard for exactly one label, without regard to case', () => {
    expect(matchServerName(entries, 'pop.example.org')?.name).toBe('pop.example.org');
    expect(matchServerName(entries, 'POP.EXAMPLE.ORG.')?.name).toBe('pop.example.org');
    expect(matchServerName(entries, 'mail.example.org')?.name).toBe('*.example.org');
    expect(matchServerName(entries, 'mail.example.net')?.name).toBe('*.Example.NET');
    expect(matchServerName(entries, 'example.org')).toBeUndefined();
    expect(matchServerName(entries, 'a.mail.example.org')).toBeUndefined();
    expect(matchServerName(entries, '')).toBeUndefined();
    expect(matchServerName(entries, '.example.org')).toBeUndefined();
  });
});
