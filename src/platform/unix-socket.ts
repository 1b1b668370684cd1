/**
 * Listening on a UNIX socket path: a socket file left by a process that is
 * gone is removed first; anything else at the path (a regular file, a
 * socket someone listens on) is an error naming the listener.
 */
import { promises as fs } from 'node:fs';
import net from 'node:net';
import { ConfigError } from '../config/errors.js';

export async function removeStaleSocket(p: string, listener: string): Promise<void> {
  const st = await fs.lstat(p).catch(() => undefined);
  if (st === undefined) return;
  if (!st.isSocket()) throw new ConfigError(`cannot listen on ${p} (${listener}): it exists and is not a socket`);
  const alive = await new Promise<boolean>((resolve) => {
    const c = net.connect({ path: p });
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
  if (alive) throw new ConfigError(`cannot listen on ${p} (${listener}): another process is listening there`);
  await fs.unlink(p);
}
