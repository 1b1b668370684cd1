/** Whether the bench's PostgreSQL (the tests' one) is missing, without the test framework's reporting. */
import pg from 'pg';
import { POSTGRES_CONNECTION } from '../test/helpers/lmtp.js';

export async function lacksPostgresQuietly(): Promise<boolean> {
  const c = new pg.Client({ ...POSTGRES_CONNECTION, connectionTimeoutMillis: 2000 });
  try {
    await c.connect();
    await c.query('SELECT 1');
    return false;
  } catch {
    return true;
  } finally {
    await c.end().catch(() => undefined);
  }
}
