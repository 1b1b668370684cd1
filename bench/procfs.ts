/**
 * Linux /proc readers for the benchmark: memory (VmRSS, PSS), CPU time, the
 * processes of one Dovecot instance, and a description of the machine.
 */
import { readFileSync, readdirSync, readlinkSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import os from 'node:os';

const CLK_TCK = 100; // sysconf(_SC_CLK_TCK) is 100 on every Linux build Node supports

/** Fields of /proc/<pid>/stat after the command name (index 0 = field 3, "state"). */
function statFields(pid: number): string[] | undefined {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'latin1');
    return s.slice(s.lastIndexOf(')') + 2).trim().split(' ');
  } catch {
    return undefined;
  }
}

export function processGroup(pid: number): number | undefined {
  const f = statFields(pid);
  return f ? Number(f[2]) : undefined;
}

/** utime+stime of the process, plus cutime+cstime (its reaped children) when asked; seconds. */
export function cpuSeconds(pid: number, withChildren = false): number {
  const f = statFields(pid);
  if (!f) return 0;
  // field 14..17 of stat = index 11..14 here
  let ticks = Number(f[11]) + Number(f[12]);
  if (withChildren) ticks += Number(f[13]) + Number(f[14]);
  return ticks / CLK_TCK;
}

function statusKb(pid: number, key: string): number {
  try {
    const s = readFileSync(`/proc/${pid}/status`, 'latin1');
    const m = new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(s);
    return m ? Number(m[1]) : 0;
  } catch {
    return 0;
  }
}

/** Resident set size in bytes (VmRSS). */
export function rssBytes(pid: number): number {
  return statusKb(pid, 'VmRSS') * 1024;
}

/** Proportional set size in bytes (shared pages divided among the processes sharing them). */
export function pssBytes(pid: number): number {
  try {
    const s = readFileSync(`/proc/${pid}/smaps_rollup`, 'latin1');
    const m = /^Pss:\s+(\d+) kB/m.exec(s);
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

function allPids(): number[] {
  return readdirSync('/proc')
    .filter((n) => /^\d+$/.test(n))
    .map(Number);
}

/** Processes whose process group is `pgid` (a Dovecot master started detached leads its own group). */
export function groupMembers(pgid: number): number[] {
  return allPids().filter((p) => processGroup(p) === pgid);
}

/** The Dovecot master started with `-c <confPath>`. */
export function findDovecotMaster(confPath: string): number | undefined {
  for (const pid of allPids()) {
    let cmd: string;
    try {
      cmd = readFileSync(`/proc/${pid}/cmdline`, 'latin1');
    } catch {
      continue;
    }
    const argv = cmd.split('\0');
    if (argv.includes(confPath) && (argv[0] ?? '').endsWith('dovecot')) {
      try {
        if (readlinkSync(`/proc/${pid}/exe`).endsWith('/dovecot')) return pid;
      } catch {
        // exited meanwhile
      }
    }
  }
  return undefined;
}

export function processName(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'latin1').split('\0').filter((s) => s !== '').join(' ');
  } catch {
    return '?';
  }
}

export interface MemorySample {
  rss: number;
  pss: number;
  processes: number;
}

export function memoryOf(pids: number[]): MemorySample {
  let rss = 0;
  let pss = 0;
  for (const p of pids) {
    rss += rssBytes(p);
    pss += pssBytes(p);
  }
  return { rss, pss, processes: pids.length };
}

/** The soft RLIMIT_NOFILE of this process. */
export function openFileLimit(): number {
  try {
    const m = /^Max open files\s+(\d+|unlimited)/m.exec(readFileSync('/proc/self/limits', 'latin1'));
    if (m) return m[1] === 'unlimited' ? Number.MAX_SAFE_INTEGER : Number(m[1]);
  } catch {
    // not Linux
  }
  return 1024;
}

export interface MachineInfo {
  cpu: string;
  cores: number;
  ramGiB: number;
  kernel: string;
  node: string;
  dovecot: string;
  os: string;
}

export function machineInfo(dovecotBin: string): MachineInfo {
  const cpus = os.cpus();
  let dovecot = 'not installed';
  try {
    dovecot = execFileSync(dovecotBin, ['--version'], { encoding: 'utf8' }).trim();
  } catch {
    // left as 'not installed'
  }
  let osName = `${os.type()} ${os.release()}`;
  try {
    const m = /^PRETTY_NAME="?([^"\n]*)"?/m.exec(readFileSync('/etc/os-release', 'utf8'));
    if (m?.[1]) osName = m[1];
  } catch {
    // keep the uname form
  }
  return {
    cpu: (cpus[0]?.model ?? 'unknown').trim(),
    cores: os.availableParallelism(),
    ramGiB: Math.round((os.totalmem() / 2 ** 30) * 10) / 10,
    kernel: `${os.type()} ${os.release()} ${os.arch()}`,
    node: process.version,
    dovecot,
    os: osName,
  };
}

/** CPU seconds all processes on the machine have used since boot (everything in /proc/stat except idle and iowait). */
export function systemBusySeconds(): number {
  try {
    const first = readFileSync('/proc/stat', 'latin1').split('\n')[0] ?? '';
    const f = first.trim().split(/\s+/).slice(1).map(Number);
    // user nice system idle iowait irq softirq steal guest guest_nice; guest time is already in user.
    const busy = (f[0] ?? 0) + (f[1] ?? 0) + (f[2] ?? 0) + (f[5] ?? 0) + (f[6] ?? 0) + (f[7] ?? 0);
    return busy / CLK_TCK;
  } catch {
    return NaN;
  }
}

/** Processes whose parent is `ppid`. */
export function childrenOf(ppid: number): number[] {
  return allPids().filter((p) => {
    const f = statFields(p);
    return f !== undefined && Number(f[1]) === ppid;
  });
}
