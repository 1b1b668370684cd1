import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { PasswdFileAuthenticator } from '../../src/auth/passwd-file/authenticator.js';
import { silentLogger } from '../../src/observability/log.js';
import { Pop3Server } from '../../src/server/server.js';
import { MaildirStore } from '../../src/store/maildir/maildir-store.js';
import type { MailStore } from '../../src/store/types.js';
import { testSettings } from '../helpers/server.js';
import { Wire } from '../helpers/wire.js';

describe('login timeout', () => {
  it('does not fire while the server itself is still opening a slow maildrop', async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-slow-'));
    await fs.writeFile(path.join(dir, 'users'), 'alice:{PLAIN}secret\n');
    const inner = new MaildirStore({ root: dir, logger: silentLogger(), fsync: false });
    // A first login on a huge maildrop: the scan outlasts the pre-login inactivity limit.
    const slow: MailStore = {
      open: async (u, signal) => {
        await new Promise((r) => setTimeout(r, 800));
        return inner.open(u, signal);
      },
      deliver: (u, m, signal) => inner.deliver(u, m, signal),
    };
    const server = new Pop3Server({
      settings: testSettings({ login_timeout: 0.3 }),
      authenticator: new PasswdFileAuthenticator(path.join(dir, 'users')),
      store: slow,
      logger: silentLogger(),
    });
    const [bound] = await server.listen([{ host: '127.0.0.1', port: 0, tls: false }]);
    try {
      const w = await Wire.connect(bound!.port);
      await w.line();
      await w.cmd('USER alice');
      expect(await w.cmd('PASS secret')).toMatch(/^\+OK/);
      expect(await w.cmd('STAT')).toBe('+OK 0 0');
      await w.cmd('QUIT');
    } finally {
      await server.close();
      await fs.rm(dir, { recursive: true, force: true });
    }
  });
});
