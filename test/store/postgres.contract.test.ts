/** The store contract on the PostgreSQL store (a real server, a schema of this file's own). */
import { lacksPostgres } from '../helpers/peers.js';
import { storeContract } from './contract.js';
import { pgSchema, type PgSchema } from './pg.js';

const PG_DOWN = await lacksPostgres();

if (!PG_DOWN) {
  let schema: PgSchema | undefined;
  storeContract('postgres', async () => {
    schema ??= await pgSchema();
    const s = schema;
    const store = s.store();
    return {
      store,
      age: async (user, days) => {
        await s.admin.query(
          `UPDATE poplar_messages SET first_retrieved_at = first_retrieved_at - $2 * interval '1 day'
            WHERE mailbox_id = (SELECT mailbox_id FROM poplar_mailboxes WHERE username = $1)`,
          [user, days],
        );
      },
      close: () => store.close(),
    };
  });
}
