/**
 * The setup page in a real browser (headless Chromium): type an address,
 * see the server, port, security and login to copy, download the Apple
 * profile and read it back; an address of another domain gets an error.
 * Chromium also parses the Thunderbird file as XML (a second, independent
 * parser). A screenshot of the filled-in page is kept in test-artifacts/.
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium, type Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bindAutoconfig, type AutoconfigService } from '../../src/autoconfig/serve-autoconfig.js';
import { loadConfig } from '../../src/config/load.js';
import { silentLogger } from '../../src/observability/log.js';
import { ROOT } from '../helpers/cli.js';
import { lacks, peerPath } from '../helpers/peers.js';
import { pythonPlist } from './helpers.js';

const ARTIFACTS = path.join(ROOT, 'test-artifacts');

describe.skipIf(lacks('chromium') || lacks('python3'))('the setup page in Chromium', () => {
  let dir: string;
  let svc: AutoconfigService;
  let base: string;
  let browser: Browser;

  beforeAll(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-setup-page-'));
    const file = path.join(dir, 'poplar.toml');
    await fs.writeFile(
      file,
      `
[server]
hostname = "pop.example.com"
listen = ["0.0.0.0:110"]
listen_tls = ["0.0.0.0:995"]
[autoconfig]
listen = ["127.0.0.1:0"]
domains = ["example.com"]
display_name = "Example Mail"
smtp_host = "smtp.example.com"
smtp_port = 465
`,
    );
    svc = (await bindAutoconfig(loadConfig({ config: file }), { logger: silentLogger(), tls: { cert: 'unused', key: 'unused' } }))!;
    base = `http://127.0.0.1:${svc.server.addresses[0]!.port}`;
    // --no-sandbox: the tests run as root in CI, where Chromium's sandbox refuses to start.
    browser = await chromium.launch({ executablePath: peerPath('chromium')!, args: ['--no-sandbox'] });
  });
  afterAll(async () => {
    await browser?.close();
    await svc?.close(0);
    await fs.rm(dir, { recursive: true, force: true });
  });

  it('shows the settings for a typed address and downloads the Apple profile', async () => {
    const context = await browser.newContext({ acceptDownloads: true, viewport: { width: 900, height: 1000 } });
    const page = await context.newPage();
    const blocked: string[] = [];
    page.on('console', (m) => {
      if (/Content Security Policy/i.test(m.text())) blocked.push(m.text());
    });
    await page.goto(`${base}/`);
    expect(await page.title()).toBe('Set up your mail client – Example Mail');
    await page.fill('#emailaddress', 'alice@example.com');
    await page.fill('#name', 'Alice Example');
    await page.click('#show');
    await page.waitForSelector('#settings');

    const field = (table: string, f: string): Promise<string> => page.locator(`#${table} [data-field="${f}"]`).innerText();
    expect(await field('incoming', 'server')).toBe('pop.example.com');
    expect(await field('incoming', 'port')).toBe('995');
    expect(await field('incoming', 'security')).toBe('SSL/TLS');
    expect(await field('incoming', 'auth')).toBe('Normal password');
    expect(await field('incoming', 'username')).toBe('alice@example.com');
    expect(await field('incoming-2', 'port')).toBe('110');
    expect(await field('incoming-2', 'security')).toBe('STARTTLS');
    expect(await field('outgoing', 'server')).toBe('smtp.example.com');
    expect(await field('outgoing', 'port')).toBe('465');
    expect(await field('outgoing', 'security')).toBe('SSL/TLS');
    // The inline style is allowed by the page's policy (its hash): the button is styled, and nothing was blocked.
    expect(await page.locator('#apple-profile').evaluate((e) => (globalThis as unknown as { getComputedStyle(x: unknown): { backgroundColor: string } }).getComputedStyle(e).backgroundColor)).toBe('rgb(43, 95, 217)');
    expect(blocked).toEqual([]);

    await fs.mkdir(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: path.join(ARTIFACTS, 'autoconfig-setup-page.png'), fullPage: true });

    const [download] = await Promise.all([page.waitForEvent('download'), page.click('#apple-profile')]);
    expect(download.suggestedFilename()).toBe('alice@example.com.mobileconfig');
    const saved = await download.path();
    const profile = pythonPlist(await fs.readFile(saved));
    const account = (profile['PayloadContent'] as Record<string, unknown>[])[0]!;
    expect(account).toMatchObject({
      EmailAccountType: 'EmailTypePOP',
      EmailAddress: 'alice@example.com',
      EmailAccountName: 'Alice Example',
      IncomingMailServerHostName: 'pop.example.com',
      IncomingMailServerPortNumber: 995,
      IncomingMailServerUseSSL: true,
      OutgoingMailServerHostName: 'smtp.example.com',
      OutgoingMailServerPortNumber: 465,
    });
    await context.close();
  });

  it('says so when the address is of a domain the server does not serve', async () => {
    const page = await browser.newPage();
    await page.goto(`${base}/`);
    await page.fill('#emailaddress', 'bob@other.org');
    await page.click('#show');
    await page.waitForSelector('#error');
    expect(await page.locator('#error').innerText()).toContain('other.org');
    expect(await page.locator('#settings').count()).toBe(0);
    await page.close();
  });

  it('Chromium reads the Thunderbird file as well-formed XML with the same servers', async () => {
    const page = await browser.newPage();
    await page.goto(`${base}/mail/config-v1.1.xml?emailaddress=alice%40example.com`);
    // A string, run in the page (the browser's DOM, not Node's types).
    const seen = await page.evaluate(`(async () => {
      const doc = new DOMParser().parseFromString(await (await fetch(location.href)).text(), 'application/xml');
      return {
        error: doc.getElementsByTagName('parsererror').length,
        incoming: [...doc.getElementsByTagName('incomingServer')].map((s) => ['hostname', 'port', 'socketType'].map((t) => s.getElementsByTagName(t)[0]?.textContent)),
        outgoing: [...doc.getElementsByTagName('outgoingServer')].map((s) => s.getElementsByTagName('port')[0]?.textContent),
      };
    })()`);
    expect(seen).toEqual({
      error: 0,
      incoming: [['pop.example.com', '995', 'SSL'], ['pop.example.com', '110', 'STARTTLS']],
      outgoing: ['465'],
    });
    await page.close();
  });
});
