/**
 * `poplar migrate --dry-run`: per user, what the source holds, what the
 * target already has and what would move. Nothing is written anywhere: a
 * Maildir is surveyed without its lock and without a login's changes
 * (surveyMaildrop), a POP3 server is listed and left with QUIT (no RETR, no
 * DELE), a PostgreSQL source is only listed.
 */
import { formatBytes } from '../fetch/progress.js';
import { surveyMaildrop } from '../store/maildir/migration.js';
import type { MigrationSource } from '../store/migration.js';
import type { Endpoint } from './endpoints.js';
import { checkMessages } from './run.js';

export interface DryRunDeps {
  from: Endpoint;
  to: Endpoint;
  openSource(user: string, skip: (n: number, why: string) => void): Promise<MigrationSource>;
  maxMessageOctets: number;
  classify(e: unknown): number;
}

interface Listed {
  uidl: string | undefined;
  size: number;
}

export async function dryRun(users: readonly string[], d: DryRunDeps): Promise<{ lines: string[]; exitCode: number }> {
  const lines: string[] = [];
  let exitCode = 0;
  const total = { messages: 0, move: 0, bytes: 0, present: 0, skipped: 0 };
  for (const user of users) {
    try {
      let skipped = 0;
      let listed: Listed[];
      if (d.from.kind === 'maildir') {
        const s = await surveyMaildrop(d.from.root, user);
        if (!s.exists) throw Object.assign(new Error(`no maildrop for ${user} under ${d.from.root}`), { notFound: true });
        listed = s.messages;
      } else {
        const src = await d.openSource(user, () => skipped++);
        try {
          const ok = new Set(checkMessages(src.messages, d.maxMessageOctets, () => skipped++));
          listed = src.messages.filter((_, i) => ok.has(i)).map((m) => ({ uidl: m.uidl, size: m.size }));
        } finally {
          await src.close();
        }
      }
      let present: Set<string> | undefined;
      if (d.to.kind === 'maildir') {
        present = new Set((await surveyMaildrop(d.to.root, user)).messages.flatMap((m) => (m.uidl === undefined ? [] : [m.uidl])));
      }
      const move = listed.filter((m) => m.uidl === undefined || present === undefined || !present.has(m.uidl));
      const bytes = move.reduce((t, m) => t + m.size, 0);
      const have = listed.length - move.length;
      total.messages += listed.length;
      total.move += move.length;
      total.bytes += bytes;
      total.present += have;
      total.skipped += skipped;
      lines.push(
        `${user}: ${listed.length} messages, ${present === undefined ? 'the target is not checked' : `${have} already in the target`}, ${move.length} to move (${formatBytes(bytes)})${skipped > 0 ? `, ${skipped} would be skipped` : ''}`,
      );
    } catch (e) {
      const code = (e as { notFound?: boolean }).notFound === true ? 67 : d.classify(e);
      if (exitCode === 0) exitCode = code;
      lines.push(`${user}: cannot be read: ${(e as Error).message}`);
    }
  }
  lines.push(`total: ${users.length} user${users.length === 1 ? '' : 's'}, ${total.messages} messages, ${total.present} already in the target, ${total.move} to move (${formatBytes(total.bytes)}), ${total.skipped} would be skipped`);
  return { lines, exitCode };
}
