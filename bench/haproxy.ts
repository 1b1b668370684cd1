/**
 * HAProxy in front of Poplar nodes for the `nodes` figure: mode tcp, round
 * robin, PROXY protocol v2 to every node (the nodes trust 127.0.0.1/32), the
 * way docs/scaling.md puts HAProxy before a cluster. Runs in the foreground
 * (-db) in a process group of its own, so stopping it leaves nothing behind.
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { cpuSeconds, groupMembers } from './procfs.js';
import { freePort, withFileLimit, type BenchServer } from './servers.js';

export function haproxyAvailable(): boolean {
  return spawnSync('haproxy', ['-v'], { stdio: 'ignore' }).status === 0;
}

export function haproxyVersion(): string {
  const r = spawnSync('haproxy', ['-v'], { encoding: 'utf8' });
  return (r.stdout ?? '').split('\n')[0]?.replace(/^HAProxy version /, '').trim() ?? 'unknown';
}

export function haproxyConfig(port: number, nodes: number[]): string {
  return [
    'global',
    '  maxconn 4000',
    '',
    'defaults',
    '  mode tcp',
    '  timeout connect 5s',
    '  timeout client 120s',
    '  timeout server 120s',
    '',
    'frontend pop3',
    `  bind 127.0.0.1:${port}`,
    '  default_backend nodes',
    '',
    'backend nodes',
    '  balance roundrobin',
    ...nodes.map((p, i) => `  server node${i + 1} 127.0.0.1:${p} send-proxy-v2`),
    '',
  ].join('\n');
}

/** Starts HAProxy for these node ports; resolves once its port greets (through a node). */
export async function startHaproxy(dir: string, nodes: number[]): Promise<BenchServer & { config: string }> {
  mkdirSync(dir, { recursive: true });
  const port = await freePort();
  const config = haproxyConfig(port, nodes);
  const file = path.join(dir, 'haproxy.cfg');
  writeFileSync(file, config);
  const [cmd, args] = withFileLimit(65536, ['haproxy', '-db', '-f', file]);
  const child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'], detached: true });
  let err = '';
  child.stderr?.on('data', (d: Buffer) => (err = (err + d.toString()).slice(-4000)));
  let exited = false;
  const exit = new Promise<void>((resolve) => child.once('exit', () => ((exited = true), resolve())));
  const pid = child.pid;
  if (pid === undefined) throw new Error('could not start haproxy');
  const stop = async (): Promise<void> => {
    if (!exited) {
      try {
        process.kill(-pid, 'SIGTERM');
      } catch {
        // gone
      }
      const t = setTimeout(() => {
        try {
          process.kill(-pid, 'SIGKILL');
        } catch {
          // gone
        }
      }, 3000);
      await exit;
      clearTimeout(t);
    }
  };
  const deadline = Date.now() + 10_000;
  for (;;) {
    if (exited) throw new Error(`haproxy exited during startup: ${err}`);
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect({ host: '127.0.0.1', port });
      const t = setTimeout(() => (s.destroy(), resolve(false)), 1000);
      s.once('data', (d: Buffer) => (clearTimeout(t), s.destroy(), resolve(d.toString('latin1').startsWith('+OK'))));
      s.once('error', () => (clearTimeout(t), resolve(false)));
    });
    if (ok) break;
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`haproxy on port ${port} did not pass a greeting within 10 s: ${err}`);
    }
    await sleep(50);
  }
  return {
    name: 'HAProxy',
    port,
    config,
    pids: () => (exited ? [] : groupMembers(pid)),
    cpuSeconds: () => groupMembers(pid).reduce((t, p) => t + cpuSeconds(p, p === pid), 0),
    settings: config,
    adopt: () => undefined,
    stop,
  };
}
