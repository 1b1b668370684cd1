/**
 * docs/reliability.md is partly written by the runs that measure it: each
 * run replaces the text between `<!-- NAME:start -->` and `<!-- NAME:end -->`
 * (soak, fuzz) and leaves the rest alone.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const RELIABILITY_DOC = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../docs/reliability.md');

export async function replaceSection(name: string, markdown: string, file = RELIABILITY_DOC): Promise<void> {
  const text = await fs.readFile(file, 'utf8');
  const start = `<!-- ${name}:start -->`;
  const end = `<!-- ${name}:end -->`;
  const i = text.indexOf(start);
  const j = text.indexOf(end);
  if (i === -1 || j < i) throw new Error(`${file} has no ${start} … ${end} section`);
  await fs.writeFile(file, `${text.slice(0, i + start.length)}\n${markdown.trim()}\n${text.slice(j)}`);
}
