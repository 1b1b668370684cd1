/** The store contract on the Maildir store. */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { silentLogger } from '../../src/observability/log.js';
import { MaildirStore } from '../../src/store/maildir/maildir-store.js';
import { storeContract } from './contract.js';

storeContract('maildir', async () => {
  const root = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-contract-'));
  // EXPIRE on Maildir dates the first retrieval by the file's ctime: ageing moves the store's clock on.
  let shift = 0;
  const store = new MaildirStore({ root, logger: silentLogger(), fsync: false, scanFiles: false, now: () => Date.now() + shift });
  return {
    store,
    age: async (_user, days) => {
      shift += days * 86_400_000;
    },
    close: () => fs.rm(root, { recursive: true, force: true }),
  };
});
