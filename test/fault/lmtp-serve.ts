/**
 * The fault tests' server: `poplar serve` from a config written into `dir`,
 * POP3 on 127.0.0.1:0 without TLS, LMTP on 127.0.0.1:0, and the sections the
 * test brings ([auth], [store], ...). Returns the process and its LMTP port.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { startServe, type ServeProcess } from '../helpers/cli.js';

export async function serveWithLmtp(opts: {
  dir: string;
  /** More `[server]` settings (e.g. `user = "nobody"`). */
  server?: string[];
  /** The other sections, each with its header. */
  rest: string[];
  dataDir?: string;
  allowRoot?: boolean;
}): Promise<{ srv: ServeProcess; lmtpPort: number }> {
  const file = path.join(opts.dir, 'poplar.toml');
  await fs.writeFile(
    file,
    [
      `data_dir = ${JSON.stringify(opts.dataDir ?? opts.dir)}`,
      'log_format = "json"',
      '[server]',
      'listen = ["127.0.0.1:0"]',
      'listen_tls = []',
      ...(opts.server ?? []),
      ...opts.rest,
      '[lmtp]',
      'listen = ["127.0.0.1:0"]',
      '',
    ].join('\n'),
  );
  const srv = await startServe(['--config', file], { cwd: opts.dir, expectListeners: 1, ...(opts.allowRoot !== undefined ? { allowRoot: opts.allowRoot } : {}) });
  const line = srv.stderr().split('\n').find((l) => l.includes('lmtp listening')) ?? '';
  const lmtpPort = Number(/"lmtp":"127\.0\.0\.1:(\d+)"/.exec(line)?.[1]);
  if (!(lmtpPort > 0)) throw new Error(`no LMTP listener:\n${srv.stderr()}`);
  return { srv, lmtpPort };
}
