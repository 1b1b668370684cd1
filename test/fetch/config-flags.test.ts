import { describe, expect, it } from 'vitest';
import { accountFromFlags } from '../../src/fetch/config.js';
import { plainConfigFromFlags, type AccountFlags } from '../../src/fetch/config-flags.js';

const env = { XDG_STATE_HOME: '/var/lib/me/state' };
const base: AccountFlags = { host: 'pop.example.org', user: 'me', passwordEnv: 'PW', keep: true, maildir: 'Maildir' };
/** `base` without `keys`, with `more`. */
const but = (keys: (keyof AccountFlags)[], more: AccountFlags): AccountFlags => {
  const f: Record<string, unknown> = { ...base };
  for (const k of keys) delete f[k];
  return { ...(f as AccountFlags), ...more };
};

describe('poplar fetch with one account on the command line, without the schema', () => {
  it('gives the configuration the schema gives, defaults included', () => {
    const cases: AccountFlags[] = [
      base,
      but(['keep'], { delete: true, all: true }),
      but(['passwordEnv'], { passwordCommand: 'pass show pop' }),
      { ...base, tls: 'none', port: 1110, state: '~/ledger', batch: 1, parallel: 64, timeout: 5, name: 'work' },
      { ...base, tls: 'starttls', insecure: true, maildir: '/abs/Maildir', batch: 10_000 },
      { ...base, user: 'me@example.org', host: 'h' },
    ];
    for (const f of cases) {
      const plain = plainConfigFromFlags(f, '/home/me', env);
      expect(plain, JSON.stringify(f)).toBeDefined();
      expect(plain).toEqual(accountFromFlags(f, '/home/me', env));
    }
  });

  it('leaves everything else to the schema, which words the error or fills in what the plain form does not know', () => {
    const others: AccountFlags[] = [
      { ...base, batch: 10_001 },
      { ...base, parallel: 0 },
      { ...base, port: 70_000 },
      { ...base, tls: 'ssl' },
      { ...base, name: 'a/b' },
      { ...base, timeout: 0 },
      { ...base, passwordEnv: '' },
      { ...base, skipLargerThan: '10M' },
      { ...base, auth: 'APOP' },
      { ...base, ca: '/etc/ca.pem' },
      { ...base, fingerprint: 'AB:CD' },
      { ...base, deleteAfterDays: 3 },
      but(['maildir'], { mbox: '/var/mail/me' }),
      but(['passwordEnv'], { tokenCommand: 'oauth2 token' }),
    ];
    for (const f of others) expect(plainConfigFromFlags(f, '/home/me', env), JSON.stringify(f)).toBeUndefined();
    expect(() => accountFromFlags({ ...base, batch: 10_001 }, '/home/me', env)).toThrow(/batch/);
  });

  it('the command line mistakes are reported by either path', () => {
    expect(() => plainConfigFromFlags(but(['host'], {}), '/home/me', env)).toThrow(/--host is required/);
    expect(() => plainConfigFromFlags({ ...base, mbox: '/m' }, '/home/me', env)).toThrow(/exactly one of --maildir/);
  });
});
