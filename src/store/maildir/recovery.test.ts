import { promises as fs, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../../observability/log.js';
import { MaildirStore } from './maildir-store.js';

let root: string;
beforeEach(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-recover-'));
});
afterEach(() => fs.rm(root, { recursive: true, force: true }));

function selfStart(): string {
  const stat = readFileSync('/proc/self/stat', 'latin1');
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19]!;
}

describe('MaildirStore recovers instead of locking users out', () => {
  it('takes over a lock file this very process left behind', async () => {
    const store = new MaildirStore({ root, logger: silentLogger(), fsync: false });
    await store.deliver('u', Buffer.from('Subject: x\r\n\r\nx\r\n'));
    await fs.writeFile(path.join(root, 'u', 'poplar-pop3.lock'), `${process.pid} ${selfStart()} ${os.hostname()}\n`);
    const drop = await store.open({ username: 'u' });
    expect(drop.messages).toHaveLength(1);
    await drop.release();
  });

  it('rebuilds a corrupt dovecot-uidlist', async () => {
    const store = new MaildirStore({ root, logger: silentLogger(), fsync: false });
    await store.deliver('u', Buffer.from('Subject: x\r\n\r\nx\r\n'));
    await fs.mkdir(path.join(root, 'u'), { recursive: true });
    await fs.writeFile(path.join(root, 'u', 'dovecot-uidlist'), 'garbage\n');
    const drop = await store.open({ username: 'u' });
    expect(drop.messages).toHaveLength(1);
    expect(drop.messages[0]!.uidl).toMatch(/^00000001[0-9a-f]{8}$/);
    await drop.release();
    expect(await fs.readFile(path.join(root, 'u', 'dovecot-uidlist'), 'utf8')).toMatch(/^3 V\d+ N2 /);
  });
});
