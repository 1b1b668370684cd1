/** One transaction on a client taken from the pool for its duration only (the users backend's migrations and the PostgreSQL store). */
import type { Pool, PoolClient } from 'pg';

/** Runs `fn` between BEGIN and COMMIT; ROLLBACK when it throws (a client that cannot roll back is discarded). */
export async function inTransaction<T>(pool: Pool, fn: (client: PoolClient) => Promise<T>): Promise<T> {
  const client = await pool.connect();
  let broken = false;
  try {
    await client.query('BEGIN');
    try {
      const result = await fn(client);
      await client.query('COMMIT');
      return result;
    } catch (e) {
      await client.query('ROLLBACK').catch(() => {
        broken = true;
      });
      throw e;
    }
  } finally {
    client.release(broken);
  }
}
