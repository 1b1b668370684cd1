import { describe, expect, it } from 'vitest';
import { ConfigSchema } from '../config/schema.js';
import { clientSettings } from './settings.js';

const oauth = { jwks_file: '/etc/poplar/jwks.json', issuer: 'https://id.example.com', audience: 'pop' };

function settingsFor(server: Record<string, unknown>, auth: Record<string, unknown> = {}, stls = true) {
  const config = ConfigSchema.parse({
    server: { hostname: 'pop.example.com', listen: ['0.0.0.0:110'], listen_tls: ['0.0.0.0:995'], ...server },
    auth,
    autoconfig: { listen: ['127.0.0.1:0'], domains: ['Example.COM'] },
  });
  return clientSettings(config, { stls });
}

describe('client settings from the configuration', () => {
  it('login methods follow the mechanisms, APOP and OAuth', () => {
    expect(settingsFor({}).auth).toEqual(['password-cleartext']);
    expect(settingsFor({ apop: true }).auth).toEqual(['password-cleartext', 'password-encrypted']);
    expect(settingsFor({ sasl_mechanisms: ['CRAM-MD5', 'PLAIN'] }).auth).toEqual(['password-cleartext', 'password-encrypted']);
    expect(settingsFor({ sasl_mechanisms: ['CRAM-MD5'] }).auth).toEqual(['password-encrypted', 'password-cleartext']);
    // SCRAM has no name in these formats: clients would try CRAM-MD5 for "password-encrypted".
    expect(settingsFor({ sasl_mechanisms: ['SCRAM-SHA-256'] }).auth).toEqual(['password-cleartext']);
    expect(settingsFor({ sasl_mechanisms: ['SCRAM-SHA-256'] }).scram).toEqual(['SCRAM-SHA-256']);
    expect(settingsFor({}, { oauth }).auth).toEqual(['password-cleartext', 'OAuth2']);
    // OAuth configured but its mechanisms not offered: not advertised.
    expect(settingsFor({ sasl_mechanisms: ['PLAIN'] }, { oauth }).auth).toEqual(['password-cleartext']);
    expect(settingsFor({ sasl_mechanisms: ['OAUTHBEARER'] }, { oauth }).auth).toEqual(['password-cleartext', 'OAuth2']);
  });

  it('ports and TLS modes follow the listeners; plain POP3 without STLS is never advertised', () => {
    expect(settingsFor({}).incoming.map((e) => [e.port, e.security])).toEqual([[995, 'tls'], [110, 'starttls']]);
    expect(settingsFor({ listen_tls: [] }).incoming.map((e) => [e.port, e.security])).toEqual([[110, 'starttls']]);
    expect(settingsFor({ listen: [] }).incoming.map((e) => [e.port, e.security])).toEqual([[995, 'tls']]);
    // No TLS material: the plain port has no STLS, so only implicit TLS would be left; with none, nothing to advertise.
    expect(settingsFor({}, {}, false).incoming.map((e) => e.port)).toEqual([995]);
    expect(() => settingsFor({ listen_tls: [] }, {}, false)).toThrow(/no POP3 port/);
  });

  it('domains are compared in lower case; LOGIN-DELAY sets the check interval', () => {
    const s = settingsFor({ login_delay: 90 });
    expect(s.domains).toEqual(['example.com']);
    expect(s.checkIntervalMinutes).toBe(2);
  });
});
