/**
 * Interoperability: the real-client suite (clients-suite.ts) on a maildrop
 * served from Maildir, as an MTA delivered it.
 */
import { startTestServer } from '../helpers/server.js';
import { clientsSuite, PASSWORD, USER } from './clients-suite.js';
import { deliverMaildrop } from './maildrop.js';
import { capturingLogger } from './run.js';

clientsSuite('Maildir', async () => {
  const cap = capturingLogger();
  const srv = await startTestServer({ users: [{ name: USER, password: PASSWORD }], logger: cap.logger });
  const drop = await deliverMaildrop(srv, USER);
  return { srv, drop, records: cap.records, stop: () => srv.stop() };
});
