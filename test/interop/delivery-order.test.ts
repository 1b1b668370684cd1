/**
 * Message numbers follow delivery order, also for a burst delivered within one
 * millisecond: uniqueName() keeps (seconds, microseconds) strictly increasing
 * within a process, and new files get UIDs in Maildir name order. (Before that
 * fix the sub-millisecond part was random and a burst arrived shuffled.)
 */
import { afterEach, describe, expect, it, vi } from 'vitest';
import { startTestServer, type TestServer } from '../helpers/server.js';
import { Wire } from '../helpers/wire.js';

let srv: TestServer | undefined;
afterEach(async () => {
  vi.restoreAllMocks();
  await srv?.stop();
  srv = undefined;
});

/** Subjects of the maildrop in POP3 message-number order. */
async function subjectsInPop3Order(s: TestServer): Promise<string[]> {
  const w = await Wire.connect(s.port);
  expect(await w.line()).toMatch(/^\+OK/);
  await w.login('alice', 'secret');
  const list = await w.cmdLines('LIST');
  const subjects: string[] = [];
  for (let n = 1; n <= list.lines.length; n++) {
    const r = await w.cmdMulti(`TOP ${n} 0`);
    subjects.push(/^Subject: (.*)$/m.exec(r.body.toString('latin1'))?.[1]?.trim() ?? '?');
  }
  expect(await w.cmd('QUIT')).toMatch(/^\+OK/);
  return subjects;
}

async function deliverAt(s: TestServer, times: number[]): Promise<string[]> {
  const subjects: string[] = [];
  const now = vi.spyOn(Date, 'now');
  for (const [i, t] of times.entries()) {
    now.mockReturnValue(t);
    const subject = `delivery ${i + 1}`;
    subjects.push(subject);
    await s.deliver('alice', `Subject: ${subject}\r\n\r\nbody ${i + 1}\r\n`);
  }
  now.mockRestore();
  return subjects;
}

describe('message numbers follow delivery order', () => {
  it('for deliveries within the same millisecond', async () => {
    srv = await startTestServer();
    // Eight deliveries stamped with one millisecond: in order by chance only once in 8! = 40320 runs.
    const delivered = await deliverAt(srv, Array.from({ length: 8 }, () => 1_700_000_000_000));
    expect(await subjectsInPop3Order(srv)).toEqual(delivered);
  });

  // Was broken while the M field was compared as text ("M99…" after "M100…"); guards the fix.
  it('across the 99 ms → 100 ms boundary of one second', async () => {
    srv = await startTestServer();
    const delivered = await deliverAt(srv, [1_700_000_000_099, 1_700_000_000_100]);
    expect(await subjectsInPop3Order(srv)).toEqual(delivered);
  });

  it('for deliveries in different seconds (works)', async () => {
    srv = await startTestServer();
    const delivered = await deliverAt(srv, [1_700_000_000_999, 1_700_000_001_000, 1_700_000_002_000]);
    expect(await subjectsInPop3Order(srv)).toEqual(delivered);
  });
});
