/**
 * How `poplar migrate` runs as a command: a progress bar on a terminal and
 * plain lines otherwise; SIGTERM stops it cleanly (exit 75, every message
 * it stored recorded under its UIDL) and a rerun finishes the job.
 */
import { spawn } from 'node:child_process';
import { existsSync, promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { poplarArgs, ROOT, runPoplar } from '../helpers/cli.js';
import { lacksPeer } from '../helpers/peers.js';
import { messageFiles, putFile, seqMail } from './helpers.js';

let tmp: string;
let src: string;
const COUNT = 400;

beforeAll(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-migrate-cli-'));
  src = path.join(tmp, 'src');
  for (let i = 0; i < COUNT; i++) await putFile(src, 'dana', 'new', `${1700000000 + i}.M1P1.host`, seqMail(i, 'x'.repeat(2000) + '\n'));
});
afterAll(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

const SCRIPT = '/usr/bin/script';

describe('progress', () => {
  it('plain lines when standard error is no terminal', async () => {
    const r = await runPoplar(['migrate', '--from', `maildir:${src}`, '--to', `maildir:${path.join(tmp, 'plain')}`, '--all'], { timeoutMs: 120_000 });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/^poplar migrate: dana: 400 messages \(.*\) to move$/m);
    expect(r.stderr).toMatch(/^poplar migrate: dana: 400 moved \(.*\), 0 already there$/m);
    expect(r.stderr).not.toMatch(/[\u2588\u2591]/);
  });

  it.skipIf(lacksPeer({ name: 'script', install: 'apt-get install bsdutils' }, existsSync(SCRIPT)))('a progress bar on a terminal', async () => {
    const cmd = [process.execPath, ...poplarArgs(['migrate', '--from', `maildir:${src}`, '--to', `maildir:${path.join(tmp, 'tty')}`, '--all'])].map((a) => `'${a.replace(/'/g, `'\\''`)}'`).join(' ');
    const out = await new Promise<{ code: number | null; text: string }>((resolve, reject) => {
      const child = spawn(SCRIPT, ['-qfec', cmd, '/dev/null'], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
      let text = '';
      child.stdout.on('data', (d: Buffer) => (text += d.toString()));
      child.stderr.on('data', (d: Buffer) => (text += d.toString()));
      child.on('error', reject);
      child.on('close', (code) => resolve({ code, text }));
    });
    expect(out.code, out.text).toBe(0);
    expect(out.text).toMatch(/dana \[[\u2588\u2591]+\] \d+\/400 messages/);
    expect(await messageFiles(path.join(tmp, 'tty'), 'dana')).toHaveLength(COUNT);
  });
});

describe('SIGTERM', () => {
  it('stops with exit 75, every stored message recorded under its UIDL; a rerun finishes with each once', async () => {
    const target = path.join(tmp, 'term');
    const child = spawn(process.execPath, poplarArgs(['migrate', '--from', `maildir:${src}`, '--to', `maildir:${target}`, '--user', 'dana']), { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    let stdout = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    const code = await new Promise<number | null>((resolve) => {
      child.stderr.on('data', (d: Buffer) => {
        stderr += d.toString();
        if (stderr.includes('to move')) child.kill('SIGTERM');
      });
      child.on('close', (c) => resolve(c));
    });
    expect(code, stderr).toBe(75);
    expect(stdout).toMatch(/1 failed/);
    const files = await messageFiles(target, 'dana');
    expect(files.length).toBeLessThan(COUNT);
    const uidlist = await fs.readFile(path.join(target, 'dana', 'dovecot-uidlist'), 'latin1');
    expect(uidlist.split('\n').filter((l) => / P[0-9a-f]{16} :/.test(l))).toHaveLength(files.length);
    const again = await runPoplar(['migrate', '--from', `maildir:${src}`, '--to', `maildir:${target}`, '--user', 'dana'], { timeoutMs: 120_000 });
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout).toContain(`${COUNT - files.length} messages moved`);
    expect(await messageFiles(target, 'dana')).toHaveLength(COUNT);
  });
});
