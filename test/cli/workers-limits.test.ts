import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServe, type ServeProcess } from '../helpers/cli.js';
import { Wire } from '../helpers/wire.js';

/**
 * `poplar serve --workers 2` without a database: login failures, blocks and
 * LOGIN-DELAY times are kept by the primary, so they hold whichever worker
 * the kernel hands a connection to.
 */
describe('poplar serve --workers: login limits shared by the workers', () => {
  let dir: string;
  let srv: ServeProcess;
  let password: string;

  beforeAll(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-workers-limits-'));
    await fs.writeFile(
      path.join(dir, 'poplar.toml'),
      ['log_format = "json"', '[server]', 'auth_failure_delay = 0.05', 'auth_failure_max_delay = 0.1', 'auth_block_after = 4', 'login_delay = 600', ''].join('\n'),
    );
    srv = await startServe(['--workers', '2', '--config', 'poplar.toml', '--listen', '127.0.0.1:0', '--listen-tls', '127.0.0.1:0'], { cwd: dir, expectListeners: 4 });
    password = /password: (\S+)/.exec(srv.stdout())![1]!;
  }, 60_000);
  afterAll(async () => {
    await srv?.stop('SIGKILL');
    await fs.rm(dir, { recursive: true, force: true });
  });

  /** The pids of the log lines that match. */
  const pidsOf = (match: (l: Record<string, unknown>) => boolean): Set<number> => {
    const pids = new Set<number>();
    for (const line of srv.stderr().split('\n')) {
      if (!line.startsWith('{')) continue;
      const j = JSON.parse(line) as Record<string, unknown>;
      if (match(j)) pids.add(j['pid'] as number);
    }
    return pids;
  };

  /** One login per connection, `n` connections at once; the answers to PASS. */
  const attempts = async (n: number, pass: string): Promise<string[]> =>
    Promise.all(
      Array.from({ length: n }, async () => {
        const w = await Wire.connect(srv.plainPort);
        await w.line();
        await w.cmd('USER demo');
        const answer = await w.cmd(`PASS ${pass}`);
        w.close();
        return answer;
      }),
    );

  /** Bursts of logins until lines matching `match` came from both workers (the kernel picks the worker). */
  const untilBothWorkers = async (pass: string, match: (l: Record<string, unknown>) => boolean): Promise<string[]> => {
    const answers: string[] = [];
    for (let round = 0; round < 30 && pidsOf(match).size < 2; round++) {
      answers.push(...(await attempts(8, pass)));
      await new Promise((r) => setTimeout(r, 50));
    }
    return answers;
  };

  it('LOGIN-DELAY set by a login on one worker is enforced by both', async () => {
    const first = await Wire.connect(srv.plainPort);
    await first.line();
    await first.login('demo', password);
    expect(await first.cmd('QUIT')).toMatch(/^\+OK/);
    const loggedInBy = pidsOf((l) => l['msg'] === 'login');
    expect(loggedInBy.size).toBe(1);

    const answers = await untilBothWorkers(password, (l) => l['msg'] === 'login refused: LOGIN-DELAY');
    expect(pidsOf((l) => l['msg'] === 'login refused: LOGIN-DELAY').size).toBe(2);
    // Every later login with the right password was refused, on either worker.
    expect(answers.length).toBeGreaterThan(0);
    for (const a of answers) expect(a).toMatch(/^-ERR \[LOGIN-DELAY\] /);
    expect(pidsOf((l) => l['msg'] === 'login').size).toBe(1);
  }, 60_000);

  it('failures on any worker add up: once blocked, the address is refused by both, even with the right password', async () => {
    // Four failures (auth_block_after), wherever they land: each worker alone may have seen fewer.
    for (let i = 0; i < 4; i++) expect((await attempts(1, 'wrong'))[0]).toMatch(/^-ERR \[AUTH\] /);
    const answers = await untilBothWorkers(password, (l) => l['event'] === 'auth-failed' && l['why'] === 'blocked');
    expect(pidsOf((l) => l['event'] === 'auth-failed' && l['why'] === 'blocked').size).toBe(2);
    // Refused as a wrong password (not LOGIN-DELAY: the credentials were never looked at).
    expect(answers.length).toBeGreaterThan(0);
    for (const a of answers) expect(a).toMatch(/^-ERR \[AUTH\] /);
    expect(pidsOf((l) => l['msg'] === 'login').size).toBe(1);
    expect(srv.stderr()).not.toMatch(/shared login counters .* unavailable/);
  }, 60_000);
});
