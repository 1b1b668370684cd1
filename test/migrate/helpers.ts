/** Shared by the migration tests: what a POP3 server reports for a maildrop, and Maildir fixtures. */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { Pop3Client } from '../../src/client/index.js';

export interface Pop3View {
  uidl: string[];
  list: number[];
  bodies: Buffer[];
}

/** UIDL, LIST and every RETR of a maildrop, as a client sees them (QUIT without DELE: nothing changes). */
export async function pop3View(port: number, user: string, password: string): Promise<Pop3View> {
  const c = await Pop3Client.connect({ host: '127.0.0.1', port, tls: 'none' });
  try {
    await c.login(user, password, { mechanism: 'USER' });
    const uidl = (await c.uidl()).map((u) => u.uid);
    const list = (await c.list()).map((l) => l.octets);
    const bodies: Buffer[] = [];
    for (let n = 1; n <= uidl.length; n++) bodies.push(await c.retrBuffer(n));
    // RSET: RETR must not mark anything seen in the maildrop being compared.
    await c.rset();
    await c.quit();
    return { uidl, list, bodies };
  } finally {
    c.close();
  }
}

/** Write a Maildir file (dirs created) with a chosen modification time. */
export async function putFile(root: string, user: string, sub: 'new' | 'cur', name: string, content: string | Buffer, mtime?: Date): Promise<string> {
  const d = path.join(root, user);
  for (const s of ['cur', 'new', 'tmp']) await fs.mkdir(path.join(d, s), { recursive: true });
  const file = path.join(d, sub, name);
  await fs.writeFile(file, content);
  if (mtime !== undefined) await fs.utimes(file, mtime, mtime);
  return file;
}

/** Message files of a maildrop (cur/ and new/), sorted. */
export async function messageFiles(root: string, user: string): Promise<string[]> {
  const out: string[] = [];
  for (const sub of ['cur', 'new']) {
    for (const f of await fs.readdir(path.join(root, user, sub)).catch(() => [] as string[])) if (!f.startsWith('.')) out.push(`${sub}/${f}`);
  }
  return out.sort();
}

/** Every file under `dir` with its content, for "nothing changed" checks. */
export async function snapshot(dir: string): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  const walk = async (d: string): Promise<void> => {
    for (const e of await fs.readdir(d, { withFileTypes: true }).catch(() => [])) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) await walk(p);
      else out.set(path.relative(dir, p), (await fs.readFile(p)).toString('latin1'));
    }
  };
  await walk(dir);
  return out;
}

export function seqMail(i: number, extra = ''): string {
  return `From: sender${i}@example.org\nTo: alice@example.net\nSubject: message ${i}\nMessage-ID: <m${i}@example.org>\n\nbody of message ${i}\n.leading dot\n${extra}`;
}
