/**
 * Benchmark data: one template set of Maildirs, generated once into
 * bench/.work/template and reused by later runs, then copied (`cp -a`) for
 * each server so both start from identical, untouched maildrops.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { BenchUser } from './protocol.js';

/** Bump when the generated data changes, so old templates are regenerated. */
const TEMPLATE_VERSION = 3;

export const SESSION_USERS = 50;
export const SESSION_MESSAGES = 20;
export const RETR_USERS = 4;
export const RETR_MESSAGES = 32;
export const RETR_MESSAGE_SIZE = 1024 * 1024;
export const BIG_MESSAGES = 100_000;
export const BIG_USER = 'big';

export interface RetrUser extends BenchUser {
  /** Bytes of each RETR body on the wire: CRLF line ends, dot-stuffed, without the final ".\r\n". */
  expectedBodyBytes: number[];
}

export interface Manifest {
  version: number;
  sessionUsers: BenchUser[];
  retrUsers: RetrUser[];
  bigUser: BenchUser;
  /** Sum of the files' sizes per group, for the report. */
  bytes: { sessions: number; retr: number; big: number };
}

export function allUsers(m: Manifest): BenchUser[] {
  return [...m.sessionUsers, ...m.retrUsers.map(({ name, password }) => ({ name, password })), m.bigUser];
}

/** A small deterministic PRNG (xorshift32), so the template is the same on every machine. */
function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 0x1_0000_0000;
  };
}

const WORDS = (
  'the of and to in is that for it as with was on be by at this are from or have an they which one you had ' +
  'mail message server client folder sync queue deliver reply forward attach meeting budget report quarterly ' +
  'review draft schedule invoice update project status release notes minutes agenda travel plan network'
).split(' ');

function textLine(r: () => number, width: number): string {
  let s = '';
  while (s.length < width) s += (s === '' ? '' : ' ') + WORDS[Math.floor(r() * WORDS.length)]!;
  return s.slice(0, width);
}

function header(r: () => number, i: number, to: string): string {
  const d = new Date(Date.UTC(2024, 0, 1) + i * 61_000).toUTCString().replace('GMT', '+0000');
  return [
    `Return-Path: <sender${i % 97}@example.org>`,
    `Received: from mx.example.org (mx.example.org [192.0.2.${i % 250}]) by mail.example.com with ESMTPS; ${d}`,
    `From: Sender ${i % 97} <sender${i % 97}@example.org>`,
    `To: ${to}@example.com`,
    `Subject: ${textLine(r, 40)}`,
    `Date: ${d}`,
    `Message-ID: <${i}.${Math.floor(r() * 1e9)}@example.org>`,
    'MIME-Version: 1.0',
    'Content-Type: text/plain; charset=us-ascii',
    '',
  ].join('\n');
}

/** A text message with LF line ends of roughly `approx` bytes. */
function smallMessage(r: () => number, i: number, to: string, approx: number): string {
  let s = header(r, i, to) + '\n';
  while (s.length < approx) s += textLine(r, 20 + Math.floor(r() * 56)) + '\n';
  return s;
}

/**
 * A message of exactly `size` bytes with LF line ends, 76-character lines and
 * every 97th line starting with "." (dot-stuffed on the wire).
 * Returns the content and its RETR body length on the wire.
 */
function largeMessage(r: () => number, i: number, to: string, size: number): { data: Buffer; wire: number } {
  const parts: string[] = [header(r, i, to) + '\n'];
  let len = parts[0]!.length;
  let n = 0;
  while (len < size) {
    let line = (n % 97 === 5 ? '.' : '') + textLine(r, 76);
    const room = size - len - 1; // keep one byte for the LF
    if (line.length > room) line = line.slice(0, room);
    if (room > 0 && line.length === 0) line = 'x';
    parts.push(line + '\n');
    len += line.length + 1;
    n++;
  }
  const data = Buffer.from(parts.join(''), 'latin1');
  if (data.length !== size) throw new Error(`internal: generated ${data.length} bytes, wanted ${size}`);
  let lfs = 0;
  let dots = 0;
  for (let p = 0; p < data.length; p++) {
    if (data[p] === 0x0a) lfs++;
    if (data[p] === 0x2e && (p === 0 || data[p - 1] === 0x0a)) dots++;
  }
  return { data, wire: data.length + lfs + dots };
}

/** Maildir file name in cur/ without ,S= or ,W=: servers must find the sizes and cache them. */
function curName(i: number): string {
  return `${1_700_000_000 + i}.M${(i * 7919) % 1_000_000}P4242.benchhost:2,`;
}

function makeMaildir(dir: string): string {
  for (const sub of ['cur', 'new', 'tmp']) mkdirSync(path.join(dir, sub), { recursive: true });
  return path.join(dir, 'cur');
}

function password(name: string): string {
  return `bench-${name}-secret`;
}

/** Generates the template under `dir` unless a current one is already there. Returns its manifest. */
export function ensureTemplate(dir: string, log: (s: string) => void): Manifest {
  const manifestPath = path.join(dir, 'manifest.json');
  if (existsSync(manifestPath)) {
    try {
      const m = JSON.parse(readFileSync(manifestPath, 'utf8')) as Manifest;
      if (m.version === TEMPLATE_VERSION) return m;
    } catch {
      // regenerate
    }
  }
  const t0 = Date.now();
  log(`generating benchmark maildirs in ${dir} (once; reused by later runs) ...`);
  rmSync(dir, { recursive: true, force: true });
  const mail = path.join(dir, 'mail');
  const bytes = { sessions: 0, retr: 0, big: 0 };

  const sessionUsers: BenchUser[] = [];
  for (let u = 1; u <= SESSION_USERS; u++) {
    const name = `s${String(u).padStart(2, '0')}`;
    const r = rng(1000 + u);
    const cur = makeMaildir(path.join(mail, name));
    for (let i = 0; i < SESSION_MESSAGES; i++) {
      const m = smallMessage(r, i, name, 1500 + Math.floor(r() * 6000));
      writeFileSync(path.join(cur, curName(i)), m, 'latin1');
      bytes.sessions += m.length;
    }
    sessionUsers.push({ name, password: password(name) });
  }

  const retrUsers: RetrUser[] = [];
  for (let u = 1; u <= RETR_USERS; u++) {
    const name = `r${u}`;
    const r = rng(2000 + u);
    const cur = makeMaildir(path.join(mail, name));
    const expectedBodyBytes: number[] = [];
    for (let i = 0; i < RETR_MESSAGES; i++) {
      const { data, wire } = largeMessage(r, i, name, RETR_MESSAGE_SIZE);
      writeFileSync(path.join(cur, curName(i)), data);
      expectedBodyBytes.push(wire);
      bytes.retr += data.length;
    }
    retrUsers.push({ name, password: password(name), expectedBodyBytes });
  }

  {
    const r = rng(3000);
    const cur = makeMaildir(path.join(mail, BIG_USER));
    for (let i = 0; i < BIG_MESSAGES; i++) {
      const m = smallMessage(r, i, BIG_USER, 300 + Math.floor(r() * 700));
      writeFileSync(path.join(cur, curName(i)), m, 'latin1');
      bytes.big += m.length;
    }
  }

  const manifest: Manifest = { version: TEMPLATE_VERSION, sessionUsers, retrUsers, bigUser: { name: BIG_USER, password: password(BIG_USER) }, bytes };
  writeFileSync(manifestPath, JSON.stringify(manifest));
  log(`  generated in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  return manifest;
}

/** `cp -a` of the template's maildrops into `dest` (which must not exist), optionally leaving some out. */
export function copyMaildirs(templateDir: string, dest: string, users: string[]): void {
  mkdirSync(dest, { recursive: true });
  const src = path.join(templateDir, 'mail');
  const args = ['-a', ...users.map((u) => path.join(src, u)), dest];
  execFileSync('cp', args, { stdio: ['ignore', 'ignore', 'pipe'] });
}

/**
 * The big maildrop is too slow to copy on every run (100 000 files), so each
 * server keeps its own copy under bench/.work/big/<server>/ between runs,
 * together with the caches it built there (dovecot-uidlist, Dovecot's index).
 * Before use the copy is checked against the template: the same file names in
 * cur/, nothing in new/ or tmp/. A copy that differs is replaced by a fresh one.
 */
export interface BigCopy {
  /** The maildir (…/big). */
  dir: string;
  /** Just copied from the template: no caches yet. */
  fresh: boolean;
}

function sameNames(dir: string, want: readonly string[]): boolean {
  try {
    const cur = readdirSync(path.join(dir, 'cur'));
    if (cur.length !== want.length) return false;
    const set = new Set(cur);
    for (const n of want) if (!set.has(n)) return false;
    return readdirSync(path.join(dir, 'new')).length === 0;
  } catch {
    return false;
  }
}

/** Everything in the maildir besides cur/, new/ and tmp/ is a server's cache or lock file. */
function stripServerFiles(dir: string, caches: boolean): void {
  for (const e of readdirSync(dir)) {
    if (e === 'cur' || e === 'new' || e === 'tmp') continue;
    if (caches || e.endsWith('.lock') || e.endsWith('.tmp')) rmSync(path.join(dir, e), { recursive: true, force: true });
  }
  for (const e of readdirSync(path.join(dir, 'tmp'))) rmSync(path.join(dir, 'tmp', e), { recursive: true, force: true });
}

export function prepareBigCopy(templateDir: string, home: string, opts: { dropCaches: boolean; log: (s: string) => void }): BigCopy {
  const dir = path.join(home, BIG_USER);
  const want = readdirSync(path.join(templateDir, 'mail', BIG_USER, 'cur'));
  let fresh = false;
  if (!sameNames(dir, want)) {
    const t0 = Date.now();
    opts.log(`   copying the ${want.length}-message maildrop to ${path.relative(process.cwd(), home) || home} (once; kept for later runs) ...`);
    rmSync(dir, { recursive: true, force: true });
    copyMaildirs(templateDir, home, [BIG_USER]);
    opts.log(`     done in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    fresh = true;
  }
  stripServerFiles(dir, opts.dropCaches || fresh);
  return { dir, fresh };
}

/** Moves a maildir (rename, same file system). */
export function moveDir(from: string, to: string): void {
  mkdirSync(path.dirname(to), { recursive: true });
  renameSync(from, to);
}
