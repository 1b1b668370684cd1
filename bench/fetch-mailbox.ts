/**
 * The fetch benchmarks' mailbox (bench/fetch.ts, bench/fetch-cpu.ts): 2000
 * messages of exactly 8 KiB with LF line ends, in a Maildir's cur/ with the
 * Seen flag (so a RETR renames nothing), for user `bench` of a private Dovecot.
 */
import { chmodSync, mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';

export const MESSAGES = 2000;
export const MESSAGE_SIZE = 8192; // octets on disk (LF line ends)
export const USER = 'bench';
export const PASSWORD = 'bench-secret';

/** Message `i`: exactly MESSAGE_SIZE octets. */
export function message(i: number): Buffer {
  const head = [
    `From: Sender ${i % 50} <sender${i % 50}@example.org>`,
    `To: ${USER}@example.org`,
    `Subject: fetch benchmark message ${i}`,
    `Date: Mon, 01 Jan 2024 00:00:00 +0000`,
    `Message-ID: <fetch-bench-${i}@example.org>`,
    'MIME-Version: 1.0',
    'Content-Type: text/plain; charset=us-ascii',
    '',
    '',
  ].join('\n');
  let body = '';
  let line = 0;
  while (head.length + body.length < MESSAGE_SIZE) {
    body += `${String(i).padStart(5, '0')}-${String(line++).padStart(4, '0')} ${'abcdefghijklmnopqrstuvwxyz0123456789'.repeat(2).slice(0, 64)}\n`;
  }
  return Buffer.from((head + body).slice(0, MESSAGE_SIZE - 1) + '\n', 'latin1');
}

/** cur/, new/ and tmp/ under `md` (and `md` itself), with `mode` when given. */
export function makeMaildir(md: string, mode?: number): void {
  for (const sub of ['cur', 'new', 'tmp']) mkdirSync(path.join(md, sub), { recursive: true });
  if (mode !== undefined) for (const d of [md, ...['cur', 'new', 'tmp'].map((s) => path.join(md, s))]) chmodSync(d, mode);
}

/** The mailbox of USER under `root` (a Dovecot mail root), written before Dovecot starts. */
export function writeMailbox(root: string): void {
  const md = path.join(root, USER);
  makeMaildir(md);
  const t = 1_700_000_000;
  for (let i = 1; i <= MESSAGES; i++) {
    const buf = message(i);
    writeFileSync(path.join(md, 'cur', `${t + i}.M${i}P1.fetchbench,S=${buf.length}:2,S`), buf);
  }
}
