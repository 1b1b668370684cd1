/**
 * The autoconfig listener over real sockets, for two configurations: a
 * server with implicit TLS and STLS, and an STLS-only one whose SASL
 * mechanisms are restricted. Every answer is read back by Python's XML and
 * plist parsers and checked field by field; hostile addresses and bodies
 * are refused or escaped.
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bindAutoconfig, type AutoconfigService } from '../../src/autoconfig/serve-autoconfig.js';
import { ConfigError, loadConfig, type ResolvedConfig } from '../../src/config/load.js';
import { ensureSelfSignedCertificate } from '../../src/config/tls-material.js';
import { silentLogger } from '../../src/observability/log.js';
import { lacks } from '../helpers/peers.js';
import { children, only, pythonPlist, pythonXml, request, text, type XmlNode } from './helpers.js';

const REQUEST_NS = 'http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006';
const RESPONSE_NS = '{http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006}';
const OUTLOOK_NS = '{http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a}';
const OUTLOOK_SCHEMA = 'http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a';

function autodiscoverBody(address: string, schema = OUTLOOK_SCHEMA): string {
  return `<?xml version="1.0" encoding="utf-8"?>
<Autodiscover xmlns="${REQUEST_NS}">
  <Request>
    <EMailAddress>${address}</EMailAddress>
    <AcceptableResponseSchema>${schema}</AcceptableResponseSchema>
  </Request>
</Autodiscover>
`;
}

let dir: string;

async function configFrom(name: string, toml: string): Promise<ResolvedConfig> {
  const file = path.join(dir, `${name}.toml`);
  await fs.writeFile(file, toml);
  return loadConfig({ config: file });
}

beforeAll(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-autoconfig-'));
  await ensureSelfSignedCertificate(path.join(dir, 'cert.pem'), path.join(dir, 'key.pem'));
});
afterAll(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

describe.skipIf(lacks('python3'))('autoconfig: implicit TLS and STLS, outgoing server configured', () => {
  let svc: AutoconfigService;
  let port: number;
  let httpsPort: number;
  let cert: Buffer;

  beforeAll(async () => {
    const config = await configFrom(
      'a',
      `
[server]
hostname = "pop.example.com"
listen = ["0.0.0.0:110"]
listen_tls = ["[::]:995"]
expire = 30
login_delay = 300
[tls]
cert = "cert.pem"
key = "key.pem"
[autoconfig]
listen = ["127.0.0.1:0"]
listen_tls = ["127.0.0.1:0"]
domains = ["example.com", "Example.NET"]
display_name = "Example & Co <Mail>"
display_short_name = "Example"
leave_messages_on_server = true
smtp_host = "smtp.example.com"
`,
    );
    cert = await fs.readFile(config.tlsCertFile);
    svc = (await bindAutoconfig(config, { logger: silentLogger(), tls: { cert, key: await fs.readFile(config.tlsKeyFile) } }))!;
    port = svc.server.addresses.find((a) => !a.tls)!.port;
    httpsPort = svc.server.addresses.find((a) => a.tls)!.port;
  });
  afterAll(async () => {
    await svc.close(0);
  });

  it('serves Thunderbird config-v1.1.xml at both paths: POP3 995 SSL first, 110 STARTTLS, the POP3 advice, the SMTP server', async () => {
    for (const p of ['/mail/config-v1.1.xml?emailaddress=alice%40example.com', '/.well-known/autoconfig/mail/config-v1.1.xml?emailaddress=alice%40example.com']) {
      const r = await request(port, p);
      expect(r.status).toBe(200);
      expect(r.headers['content-type']).toBe('application/xml; charset=utf-8');
      const root = pythonXml(r.body);
      expect(root.tag).toBe('clientConfig');
      expect(root.attrib).toEqual({ version: '1.1' });
      const provider = only(root, 'emailProvider');
      expect(provider.attrib).toEqual({ id: 'example.com' });
      expect(children(provider, 'domain').map((d) => d.text)).toEqual(['example.com']);
      expect(text(provider, 'displayName')).toBe('Example & Co <Mail>');
      expect(text(provider, 'displayShortName')).toBe('Example');
      const incoming = children(provider, 'incomingServer');
      expect(incoming.map((s) => [s.attrib['type'], text(s, 'hostname'), text(s, 'port'), text(s, 'socketType')])).toEqual([
        ['pop3', 'pop.example.com', '995', 'SSL'],
        ['pop3', 'pop.example.com', '110', 'STARTTLS'],
      ]);
      for (const s of incoming) {
        expect(text(s, 'username')).toBe('%EMAILADDRESS%');
        // Default mechanisms: PLAIN/LOGIN and USER over TLS, no CRAM-MD5, no OAuth.
        expect(children(s, 'authentication').map((a) => a.text)).toEqual(['password-cleartext']);
        const pop3 = only(s, 'pop3');
        expect(text(pop3, 'leaveMessagesOnServer')).toBe('true');
        expect(text(pop3, 'daysToLeaveMessagesOnServer')).toBe('30'); // server.expire
        expect(text(pop3, 'downloadOnBiff')).toBe('true');
        expect(only(pop3, 'checkInterval').attrib).toEqual({ minutes: '5' }); // LOGIN-DELAY 300 s
      }
      const out = only(provider, 'outgoingServer');
      expect([out.attrib['type'], text(out, 'hostname'), text(out, 'port'), text(out, 'socketType'), text(out, 'username'), text(out, 'authentication')]).toEqual([
        'smtp', 'smtp.example.com', '587', 'STARTTLS', '%EMAILADDRESS%', 'password-cleartext',
      ]);
    }
  });

  it('finds the domain from the Host header (autoconfig.DOMAIN) when the client sends no address, over HTTPS too', async () => {
    const r = await request(httpsPort, '/mail/config-v1.1.xml', { ca: cert, headers: { host: 'autoconfig.example.net' } });
    expect(r.status).toBe(200);
    expect(only(pythonXml(r.body), 'emailProvider').attrib).toEqual({ id: 'example.net' });
    // Two domains and a Host that is neither: no guess.
    expect((await request(port, '/mail/config-v1.1.xml', { headers: { host: 'autoconfig.other.org' } })).status).toBe(404);
  });

  it('answers 404 for an address of another domain, never a configuration', async () => {
    for (const p of ['/mail/config-v1.1.xml?emailaddress=alice%40other.org', '/apple/mail.mobileconfig?emailaddress=alice%40other.org', '/mail/config-v1.1.xml?emailaddress=alice%40sub.example.com']) {
      const r = await request(port, p);
      expect(r.status).toBe(404);
      expect(r.body).not.toContain('pop.example.com');
    }
  });

  it('refuses a hostile address rather than writing it into XML', async () => {
    for (const a of ['<x>@example.com', '"a b"@example.com', 'a@example.com<', 'a@example.com\r\nX: y', `${'a'.repeat(65)}@example.com`, '@example.com', 'alice@']) {
      const r = await request(port, `/mail/config-v1.1.xml?emailaddress=${encodeURIComponent(a)}`);
      expect(r.status, a).toBe(404);
      const page = await request(port, `/?emailaddress=${encodeURIComponent(a)}`);
      expect(page.status, a).toBe(400);
      expect(page.body).not.toContain('<x>');
    }
  });

  it('answers Outlook Autodiscover (POX) for a real request body: POP3 995 SSL, 110 TLS, SMTP', async () => {
    // The path in Outlook's own capitalisation; the local part has XML specials that must come back intact.
    const address = "o'hara&co@example.com";
    const r = await request(port, '/Autodiscover/Autodiscover.xml', { method: 'POST', body: autodiscoverBody("o&apos;hara&amp;co@example.com"), headers: { 'content-type': 'text/xml' } });
    expect(r.status).toBe(200);
    expect(r.headers['content-type']).toBe('text/xml; charset=utf-8');
    const root = pythonXml(r.body);
    expect(root.tag).toBe(`${RESPONSE_NS}Autodiscover`);
    const account = only(only(root, `${OUTLOOK_NS}Response`), `${OUTLOOK_NS}Account`);
    expect(text(account, `${OUTLOOK_NS}AccountType`)).toBe('email');
    expect(text(account, `${OUTLOOK_NS}Action`)).toBe('settings');
    const field = (p: XmlNode, f: string): string => text(p, `${OUTLOOK_NS}${f}`);
    const protocols = children(account, `${OUTLOOK_NS}Protocol`).map((p) =>
      ['Type', 'Server', 'Port', 'LoginName', 'SSL', 'Encryption', 'SPA', 'AuthRequired', 'DomainRequired'].map((f) => field(p, f)),
    );
    expect(protocols).toEqual([
      ['POP3', 'pop.example.com', '995', address, 'on', 'SSL', 'off', 'on', 'off'],
      ['POP3', 'pop.example.com', '110', address, 'on', 'TLS', 'off', 'on', 'off'],
      ['SMTP', 'smtp.example.com', '587', address, 'on', 'TLS', 'off', 'on', 'off'],
    ]);
  });

  it('Autodiscover: another domain gets 404 with error 500; another schema error 601; not a request 400/600; GET 405', async () => {
    const foreign = await request(port, '/autodiscover/autodiscover.xml', { method: 'POST', body: autodiscoverBody('alice@other.org') });
    expect(foreign.status).toBe(404);
    const error = only(only(pythonXml(foreign.body), `${RESPONSE_NS}Response`), `${RESPONSE_NS}Error`);
    expect(text(error, `${RESPONSE_NS}ErrorCode`)).toBe('500');
    expect(foreign.body).not.toContain('pop.example.com');

    const mobile = await request(port, '/autodiscover/autodiscover.xml', { method: 'POST', body: autodiscoverBody('alice@example.com', 'http://schemas.microsoft.com/exchange/autodiscover/mobilesync/responseschema/2006') });
    expect(text(only(only(pythonXml(mobile.body), `${RESPONSE_NS}Response`), `${RESPONSE_NS}Error`), `${RESPONSE_NS}ErrorCode`)).toBe('601');

    const wrongRoot = await request(port, '/autodiscover/autodiscover.xml', { method: 'POST', body: '<Autodiscover><Request><EMailAddress>alice@example.com</EMailAddress></Request></Autodiscover>' });
    expect(wrongRoot.status).toBe(400); // no namespace: not an Outlook request
    expect(text(only(only(pythonXml(wrongRoot.body), `${RESPONSE_NS}Response`), `${RESPONSE_NS}Error`), `${RESPONSE_NS}ErrorCode`)).toBe('600');

    expect((await request(port, '/autodiscover/autodiscover.xml')).status).toBe(405);
  });

  it('Autodiscover: a body that is not well-formed XML gets 400, entity tricks included', async () => {
    const bodies = [
      '<Autodiscover xmlns="' + REQUEST_NS + '"><Request>',
      autodiscoverBody('alice@example.com').replace('</Request>', '</Requets>'),
      autodiscoverBody('a&b@example.com'),
      autodiscoverBody('alice@example.com') + '<more/>',
      `<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "alice@example.com"><!ENTITY y "&x;&x;&x;&x;">]><Autodiscover xmlns="${REQUEST_NS}"><Request><EMailAddress>&y;</EMailAddress></Request></Autodiscover>`,
      `<Autodiscover xmlns="${REQUEST_NS}"><Request><EMailAddress>&ext;</EMailAddress></Request></Autodiscover>`,
      `<p:Autodiscover><p:Request/></p:Autodiscover>`,
      `<Autodiscover xmlns="${REQUEST_NS}" a="1" a="2"/>`,
      '\u0000<Autodiscover/>',
      '',
    ];
    for (const body of bodies) {
      const r = await request(port, '/autodiscover/autodiscover.xml', { method: 'POST', body });
      expect(r.status, body).toBe(400);
      expect(r.body).not.toContain('pop.example.com');
    }
    // Not UTF-8.
    const latin1 = Buffer.from(autodiscoverBody('ali\u00e9@example.com'), 'latin1');
    expect((await request(port, '/autodiscover/autodiscover.xml', { method: 'POST', body: latin1 })).status).toBe(400);
  });

  it('Autodiscover: a body over 16 KiB gets 413, declared or chunked', async () => {
    const big = autodiscoverBody('alice@example.com').replace('<Request>', `<!--${'x'.repeat(20_000)}--><Request>`);
    expect((await request(port, '/autodiscover/autodiscover.xml', { method: 'POST', body: big })).status).toBe(413);
    expect((await request(port, '/autodiscover/autodiscover.xml', { method: 'POST', body: big, chunked: true })).status).toBe(413);
    // The listener still answers.
    expect((await request(port, '/autodiscover/autodiscover.xml', { method: 'POST', body: autodiscoverBody('alice@example.com') })).status).toBe(200);
  });

  it('serves an Apple profile: a valid plist with the POP account, stable UUIDs per address, the name escaped', async () => {
    const r = await request(port, `/apple/mail.mobileconfig?emailaddress=alice%40example.com&name=${encodeURIComponent('Alice <&> "A"')}`);
    expect(r.status).toBe(200);
    expect(r.headers['content-type']).toBe('application/x-apple-aspen-config');
    expect(r.headers['content-disposition']).toBe('attachment; filename="alice@example.com.mobileconfig"');
    const top = pythonPlist(r.body);
    expect(top).toMatchObject({ PayloadType: 'Configuration', PayloadVersion: 1, PayloadRemovalDisallowed: false, PayloadOrganization: 'Example & Co <Mail>' });
    const content = top['PayloadContent'] as Record<string, unknown>[];
    expect(content).toHaveLength(1);
    expect(content[0]).toMatchObject({
      PayloadType: 'com.apple.mail.managed',
      PayloadVersion: 1,
      EmailAccountType: 'EmailTypePOP',
      EmailAddress: 'alice@example.com',
      EmailAccountName: 'Alice <&> "A"',
      IncomingMailServerHostName: 'pop.example.com',
      IncomingMailServerPortNumber: 995,
      IncomingMailServerUseSSL: true,
      IncomingMailServerAuthentication: 'EmailAuthPassword',
      IncomingMailServerUsername: 'alice@example.com',
      OutgoingMailServerHostName: 'smtp.example.com',
      OutgoingMailServerPortNumber: 587,
      OutgoingMailServerUseSSL: true,
      OutgoingMailServerAuthentication: 'EmailAuthPassword',
      OutgoingPasswordSameAsIncomingPassword: true,
    });
    const uuid = /^[0-9A-F]{8}-[0-9A-F]{4}-5[0-9A-F]{3}-[89AB][0-9A-F]{3}-[0-9A-F]{12}$/;
    expect(top['PayloadUUID']).toMatch(uuid);
    expect(content[0]!['PayloadUUID']).toMatch(uuid);
    expect(content[0]!['PayloadUUID']).not.toBe(top['PayloadUUID']);
    // The same address again: the same identifiers (the device replaces the account); another address: others.
    const again = pythonPlist((await request(port, '/apple/mail.mobileconfig?emailaddress=alice%40EXAMPLE.com')).body);
    expect(again['PayloadUUID']).toBe(top['PayloadUUID']);
    expect(again['PayloadIdentifier']).toBe(top['PayloadIdentifier']);
    const bob = pythonPlist((await request(port, '/apple/mail.mobileconfig?emailaddress=bob%40example.com')).body);
    expect(bob['PayloadUUID']).not.toBe(top['PayloadUUID']);
  });

  it('sends the page with a policy that allows no script, and escapes what was typed', async () => {
    const r = await request(port, `/?emailaddress=${encodeURIComponent('alice@example.com')}&name=${encodeURIComponent('<script>alert(1)</script>')}`);
    expect(r.status).toBe(200);
    expect(r.headers['content-security-policy']).toMatch(/default-src 'none'/);
    expect(r.headers['content-security-policy']).not.toMatch(/script-src/);
    expect(r.body).not.toContain('<script>');
    expect(r.body).toContain('&lt;script&gt;');
    expect((await request(port, '/nothing-here')).status).toBe(404);
    expect((await request(port, '/', { method: 'DELETE' })).status).toBe(405);
  });
});

describe.skipIf(lacks('python3'))('autoconfig: STLS only, SASL mechanisms restricted, no outgoing server', () => {
  let svc: AutoconfigService;
  let port: number;

  beforeAll(async () => {
    const config = await configFrom(
      'b',
      `
[server]
hostname = "mail.example.org"
listen = ["0.0.0.0:1110"]
listen_tls = []
sasl_mechanisms = ["SCRAM-SHA-256", "CRAM-MD5"]
[autoconfig]
listen = ["127.0.0.1:0"]
domains = ["example.org"]
username = "local_part"
`,
    );
    svc = (await bindAutoconfig(config, { logger: silentLogger(), tls: { cert: await fs.readFile(path.join(dir, 'cert.pem')), key: await fs.readFile(path.join(dir, 'key.pem')) } }))!;
    port = svc.server.addresses[0]!.port;
  });
  afterAll(async () => {
    await svc.close(0);
  });

  it('advertises only STARTTLS on the plain port, encrypted password first, the local part as user name, no outgoing server', async () => {
    const r = await request(port, '/mail/config-v1.1.xml?emailaddress=carol%40example.org');
    expect(r.status).toBe(200);
    const provider = only(pythonXml(r.body), 'emailProvider');
    expect(text(provider, 'displayName')).toBe('example.org');
    const incoming = children(provider, 'incomingServer');
    expect(incoming).toHaveLength(1);
    const s = incoming[0]!;
    expect([text(s, 'hostname'), text(s, 'port'), text(s, 'socketType'), text(s, 'username')]).toEqual(['mail.example.org', '1110', 'STARTTLS', '%EMAILLOCALPART%']);
    // PLAIN and LOGIN taken out: CRAM-MD5 is meant; USER over TLS still works, so cleartext second.
    expect(children(s, 'authentication').map((a) => a.text)).toEqual(['password-encrypted', 'password-cleartext']);
    expect(text(only(s, 'pop3'), 'leaveMessagesOnServer')).toBe('false');
    expect(children(provider, 'outgoingServer')).toEqual([]);
    expect(r.body).not.toContain('995');
  });

  it('Autodiscover: one POP3 protocol (TLS on 1110), the local part as login, no SMTP', async () => {
    const r = await request(port, '/autodiscover/autodiscover.xml', { method: 'POST', body: autodiscoverBody('carol@example.org') });
    expect(r.status).toBe(200);
    const account = only(only(pythonXml(r.body), `${OUTLOOK_NS}Response`), `${OUTLOOK_NS}Account`);
    const protocols = children(account, `${OUTLOOK_NS}Protocol`);
    expect(protocols.map((p) => ['Type', 'Port', 'Encryption', 'LoginName'].map((f) => text(p, `${OUTLOOK_NS}${f}`)))).toEqual([['POP3', '1110', 'TLS', 'carol']]);
  });

  it('offers no Apple profile (it needs an outgoing server, none is made up) and says so on the page', async () => {
    const r = await request(port, '/apple/mail.mobileconfig?emailaddress=carol%40example.org');
    expect(r.status).toBe(404);
    expect(r.body).toMatch(/no outgoing server/);
    const page = await request(port, '/?emailaddress=carol%40example.org');
    expect(page.status).toBe(200);
    expect(page.body).toContain('id="no-profile"');
    expect(page.body).not.toContain('mobileconfig');
    expect(page.body).toContain('SCRAM-SHA-256');
  });
});

describe('autoconfig configuration', () => {
  const base = (extra: string): string => `
[server]
listen = ["0.0.0.0:110"]
listen_tls = ["0.0.0.0:995"]
${extra}
`;
  const tls = { cert: 'unused', key: 'unused' };

  it('is off unless it has a listener', async () => {
    expect(await bindAutoconfig(await configFrom('off', base('')), { logger: silentLogger(), tls })).toBeNull();
  });

  it('refuses to start without a host name, without domains, with nothing to advertise', async () => {
    const cases: [string, RegExp][] = [
      ['[autoconfig]\nlisten = ["127.0.0.1:0"]\ndomains = ["example.com"]', /hostname/],
      ['hostname = "pop.example.com"\n[autoconfig]\nlisten = ["127.0.0.1:0"]', /domains/],
      ['hostname = "pop.example.com"\n[autoconfig]\nlisten = ["127.0.0.1:0"]\ndomains = ["example.com"]\npop3_port = 0\npop3s_port = 0', /no POP3 port/],
    ];
    for (const [extra, why] of cases) {
      const config = await configFrom('bad', base(extra));
      await expect(bindAutoconfig(config, { logger: silentLogger(), tls })).rejects.toThrow(ConfigError);
      await expect(bindAutoconfig(config, { logger: silentLogger(), tls })).rejects.toThrow(why);
    }
    // A listen_tls without a certificate is refused too.
    const config = await configFrom('notls', base('hostname = "pop.example.com"\n[autoconfig]\nlisten_tls = ["127.0.0.1:0"]\ndomains = ["example.com"]'));
    await expect(bindAutoconfig(config, { logger: silentLogger(), tls: undefined })).rejects.toThrow(/certificate/);
    // Hostile names in the file are schema errors, not XML.
    await expect(configFrom('evil', base('[autoconfig]\nhostname = "pop.example.com</hostname><x>"'))).rejects.toThrow(/autoconfig.hostname/);
  });

  it('advertises the public ports when they differ from the listening ones (NAT, proxy)', async () => {
    const config = await configFrom('nat', base('hostname = "pop.example.com"\n[autoconfig]\nlisten = ["127.0.0.1:0"]\ndomains = ["example.com"]\npop3s_port = 1995\npop3_port = 0'));
    const svc = (await bindAutoconfig(config, { logger: silentLogger(), tls }))!;
    try {
      const r = await request(svc.server.addresses[0]!.port, '/mail/config-v1.1.xml?emailaddress=a%40example.com');
      expect(r.body.match(/<port>(\d+)<\/port>/g)).toEqual(['<port>1995</port>']);
    } finally {
      await svc.close(0);
    }
  });
});
