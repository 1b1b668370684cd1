/**
 * The peer requirement itself: a test file that needs a program runs under a
 * separate vitest with a PATH that holds only node. Without CI it passes with
 * the test skipped and says why; with CI=true the run fails and names the
 * missing program.
 */
import { execFile } from 'node:child_process';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ROOT } from './cli.js';

const FIXTURE = `
import { describe, expect, it } from 'vitest';
import { lacks } from ${JSON.stringify(path.join(ROOT, 'test/helpers/peers.ts'))};

describe.skipIf(lacks('mpop'))('a client that is not there', () => {
  it('would run mpop', () => expect('mpop').toBe('ran'));
});
it('a test that needs no peer', () => expect(1).toBe(1));
`;

interface Outcome {
  code: number | null;
  output: string;
}

describe('a test file needing a program that is not installed', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-peers-'));
    await fs.mkdir(path.join(dir, 'bin'));
    await fs.symlink(process.execPath, path.join(dir, 'bin', 'node'));
    await fs.symlink(path.join(ROOT, 'node_modules'), path.join(dir, 'node_modules'));
    await fs.writeFile(path.join(dir, 'needs-mpop.test.ts'), FIXTURE);
  });
  afterAll(() => fs.rm(dir, { recursive: true, force: true }));

  function vitest(env: NodeJS.ProcessEnv): Promise<Outcome> {
    return new Promise((resolve) => {
      execFile(
        process.execPath,
        [path.join(ROOT, 'node_modules/vitest/vitest.mjs'), 'run', '--root', dir, '--reporter', 'verbose', '--color=false'],
        { cwd: dir, env: { PATH: path.join(dir, 'bin'), HOME: dir, NO_COLOR: '1', ...env }, timeout: 60_000 },
        (err, stdout, stderr) => resolve({ code: err === null ? 0 : typeof err.code === 'number' ? err.code : null, output: stdout + stderr }),
      );
    });
  }

  it('without CI: passes, skips the tests that need it, and says which program and how to install it', async () => {
    const r = await vitest({ CI: '' });
    expect(r.code, r.output).toBe(0);
    expect(r.output).toMatch(/mpop is missing \(not on PATH=.*\); to get it: apt-get install mpop\. The tests that need it are skipped/);
    expect(r.output).toMatch(/↓ .*would run mpop/);
    expect(r.output).toMatch(/✓ .*a test that needs no peer/);
  });

  it('with CI=true: the run fails, naming the missing program', async () => {
    const r = await vitest({ CI: 'true' });
    expect(r.code, r.output).toBe(1);
    expect(r.output).toMatch(/× .*peer mpop is there \(CI=true\)/);
    expect(r.output).toMatch(/Error: mpop is missing \(not on PATH=.*\); to get it: apt-get install mpop\. With CI=true a missing peer fails the run/);
    expect(r.output).toMatch(/✓ .*a test that needs no peer/);
    expect(r.output).not.toMatch(/✓ .*would run mpop/);
  });
});
