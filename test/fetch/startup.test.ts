/**
 * `poplar fetch` starts without the modules of the other subcommands: every
 * fetch pays for what it loads, and a fetch of a few messages is mostly
 * start-up. The heavy packages are CommonJS, so the process reports the
 * packages in require.cache as it exits.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { poplarArgs, ROOT } from '../helpers/cli.js';

/** Prints, at exit, the npm packages loaded through CommonJS (one line of JSON on stderr). */
const REPORT_PACKAGES = `data:text/javascript,${encodeURIComponent(
  "import { createRequire } from 'node:module';" +
    "const cache = createRequire('/').cache;" + // require.cache is one for the whole process
    "process.on('exit', () => { const names = new Set(); for (const f of Object.keys(cache)) { const m = /node_modules\\/((?:@[^/]+\\/)?[^/]+)\\//.exec(f); if (m) names.add(m[1]); } process.stderr.write('PACKAGES ' + JSON.stringify([...names]) + '\\n'); });",
)}`;

/** A loopback port nothing listens on. */
async function closedPort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise<void>((r) => srv.close(() => r()));
  return port;
}

function run(args: string[]): Promise<{ code: number | null; stderr: string }> {
  const [tsxImport, tsx, main] = poplarArgs([]);
  const child = spawn(process.execPath, [tsxImport!, tsx!, '--import', REPORT_PACKAGES, main!, ...args], { cwd: ROOT, env: { ...process.env, PW: 'pw' }, stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  return new Promise((resolve) => child.on('close', (code) => resolve({ code, stderr })));
}

function packagesOf(stderr: string): string[] {
  const line = stderr.split('\n').find((l) => l.startsWith('PACKAGES '));
  expect(line, stderr).toBeDefined();
  return JSON.parse(line!.slice('PACKAGES '.length)) as string[];
}

describe('poplar fetch start-up', () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'poplar-fetch-startup-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('loads neither PostgreSQL, the logger, imapflow nor password hashing for a Maildir fetch', async () => {
    const port = await closedPort();
    const r = await run(['fetch', '--once', '--host', '127.0.0.1', '--port', String(port), '--tls', 'none', '--user', 'u', '--password-env', 'PW', '--keep', '--maildir', path.join(dir, 'Maildir'), '--state', path.join(dir, 'ledger')]);
    expect(r.code, r.stderr).toBe(69); // EX_UNAVAILABLE: connection refused, after everything a fetch loads was loaded
    const loaded = packagesOf(r.stderr);
    for (const heavy of ['pg', 'pino', 'imapflow', 'argon2', 'bcryptjs', 'smtp-server', 'prom-client']) expect(loaded, `loaded: ${loaded.join(', ')}`).not.toContain(heavy);
  });

  it('the report itself works: poplar check (which needs PostgreSQL support) shows pg loaded', async () => {
    const r = await run(['check', '--help']);
    expect(r.code).toBe(0);
    expect(packagesOf(r.stderr)).toContain('pg');
  });
});
