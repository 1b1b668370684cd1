/**
 * The LMTP listeners are bound before `poplar serve` switches to the service
 * user and serve only after it: a connection that arrives in between gets no
 * greeting (and so delivers nothing as root) until start().
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { PasswdFileAuthenticator } from '../../src/auth/passwd-file/authenticator.js';
import { LmtpConfigSchema, QuotaConfigSchema } from '../../src/delivery/config.js';
import { LmtpServer } from '../../src/delivery/lmtp-server.js';
import { silentLogger } from '../../src/observability/log.js';
import { MaildirStore } from '../../src/store/maildir/maildir-store.js';
import { Wire } from '../helpers/wire.js';

describe('LmtpServer', () => {
  it('holds connections made before start() and greets them after', async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-lmtp-start-'));
    await fs.writeFile(path.join(dir, 'users'), 'alice:{PLAIN}x::::::\n');
    const server = new LmtpServer({
      config: LmtpConfigSchema.parse({}),
      quota: QuotaConfigSchema.parse({}),
      store: new MaildirStore({ root: path.join(dir, 'mail'), logger: silentLogger() }),
      authenticator: new PasswdFileAuthenticator(path.join(dir, 'users')),
      logger: silentLogger(),
      hostname: 'lmtp.test',
    });
    const [bound] = await server.listen([{ host: '127.0.0.1', port: 0 }, { path: path.join(dir, 'lmtp.sock') }]);
    const early = await Wire.connect(bound!.port!);
    await expect(early.line(300)).rejects.toThrow();
    server.start();
    expect(await early.line()).toMatch(/^220 lmtp\.test LMTP/);
    early.send('LHLO x');
    while ((await early.line()).startsWith('250-'));
    expect(await early.cmd('MAIL FROM:<a@b>')).toMatch(/^250/);
    expect(await early.cmd('RCPT TO:<alice>')).toMatch(/^250/);
    early.close();
    await server.close(0);
    // close() removes the socket file it made.
    await expect(fs.stat(path.join(dir, 'lmtp.sock'))).rejects.toMatchObject({ code: 'ENOENT' });
    await fs.rm(dir, { recursive: true, force: true });
  });
});
