import { execFile } from 'node:child_process';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ROOT } from '../helpers/cli.js';
import { lacks, peerPath } from '../helpers/peers.js';

const run = promisify(execFile);
const UNIT = path.join(ROOT, 'contrib/poplar.service');

/**
 * contrib/poplar.service as systemd reads it: `systemd-analyze verify` finds
 * no unknown key, bad value or missing program, and `systemd-analyze security`
 * rates its sandbox. verify needs the programs the unit runs to exist, so it
 * checks a copy whose commands start this checkout's bin/poplar instead of
 * /usr/local/bin/poplar (the only change).
 */
describe.skipIf(lacks('systemd-analyze'))('contrib/poplar.service', () => {
  let dir: string;
  let copy: string;
  const analyze = async (...args: string[]): Promise<{ code: number; out: string }> => {
    try {
      const r = await run(peerPath('systemd-analyze')!, args, { env: { ...process.env, SYSTEMD_LOG_COLOR: '0', SYSTEMD_PAGER: 'cat' } });
      return { code: 0, out: r.stdout + r.stderr };
    } catch (e) {
      const x = e as { code?: number; stdout?: string; stderr?: string };
      return { code: typeof x.code === 'number' ? x.code : 1, out: (x.stdout ?? '') + (x.stderr ?? '') };
    }
  };
  beforeAll(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-unit-'));
    copy = path.join(dir, 'poplar.service');
    const text = await fs.readFile(UNIT, 'utf8');
    expect(text).toContain('/usr/local/bin/poplar serve');
    await fs.writeFile(copy, text.replaceAll('/usr/local/bin/poplar', path.join(ROOT, 'bin/poplar')));
  });
  afterAll(async () => {
    await fs.rm(dir, { recursive: true, force: true });
  });

  it('systemd-analyze verify: exit 0 and not one warning', async () => {
    const r = await analyze('verify', copy);
    expect(r.out.trim()).toBe('');
    expect(r.code).toBe(0);
  });

  it('a unit with a misspelt key or a missing program is reported (the check can fail)', async () => {
    const text = await fs.readFile(copy, 'utf8');
    await fs.writeFile(path.join(dir, 'typo.service'), text.replace('ProtectSystem=strict', 'ProtectSystm=strict'));
    expect((await analyze('verify', path.join(dir, 'typo.service'))).out).toMatch(/Unknown key 'ProtectSystm'/);
    await fs.writeFile(path.join(dir, 'missing.service'), text.replaceAll(path.join(ROOT, 'bin/poplar'), '/nonexistent/poplar'));
    const missing = await analyze('verify', path.join(dir, 'missing.service'));
    expect(missing.code).not.toBe(0);
    expect(missing.out).toMatch(/nonexistent\/poplar is not executable/);
  });

  it('the sandbox: hardening settings present, systemd-analyze security rates the exposure at most 2.0', async () => {
    const text = await fs.readFile(UNIT, 'utf8');
    for (const line of [
      'NoNewPrivileges=yes',
      'ProtectSystem=strict',
      'CapabilityBoundingSet=CAP_NET_BIND_SERVICE',
      'AmbientCapabilities=CAP_NET_BIND_SERVICE',
      'ReadWritePaths=/var/lib/poplar',
      'ExecReload=/bin/kill -HUP $MAINPID',
      'RestartPreventExitStatus=78',
      'User=poplar',
    ]) {
      expect(text.split('\n')).toContain(line);
    }
    const r = await analyze('security', '--offline=yes', copy);
    const m = /Overall exposure level for poplar\.service: ([\d.]+)/.exec(r.out);
    expect(m, r.out).not.toBeNull();
    expect(Number(m![1])).toBeLessThanOrEqual(2.0);
  });
});
