import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const MAIN = path.join(ROOT, 'src/cli/main.ts');
/** tsx's loader by absolute URL, so the command works from any working directory. */
const TSX = pathToFileURL(path.join(ROOT, 'node_modules/tsx/dist/loader.mjs')).href;

/** The `poplar` command as a real process (through tsx, so tests run the current source). */
export function poplarArgs(args: string[]): string[] {
  return ['--import', TSX, MAIN, ...args];
}

/**
 * `poplar serve` refuses to run as root without `user`. Tests that run as root and are not
 * about privileges pass --allow-root (the `allowRoot: false` option leaves it out).
 */
function serveArgs(args: string[], allowRoot: boolean | undefined): string[] {
  return args[0] === 'serve' && allowRoot !== false && process.getuid?.() === 0 ? [...args, '--allow-root'] : args;
}

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export function runPoplar(
  args: string[],
  opts: { cwd?: string; input?: string; timeoutMs?: number; env?: NodeJS.ProcessEnv; allowRoot?: boolean; uid?: number; gid?: number } = {},
): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, poplarArgs(serveArgs(args, opts.allowRoot)), {
      cwd: opts.cwd ?? ROOT,
      env: { ...process.env, ...opts.env },
      stdio: ['pipe', 'pipe', 'pipe'],
      ...(opts.uid !== undefined ? { uid: opts.uid } : {}),
      ...(opts.gid !== undefined ? { gid: opts.gid } : {}),
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const t = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 30_000);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(t);
      resolve({ code, signal, stdout, stderr });
    });
    child.stdin.end(opts.input ?? '');
  });
}

export interface ServeProcess {
  child: ChildProcess;
  stdout: () => string;
  stderr: () => string;
  /** Bound listeners, read from the JSON "listening" log lines. */
  plainPort: number;
  tlsPort: number;
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

/**
 * Start `poplar serve` and wait until every listener is up (`timeoutMs`, default 30 s:
 * under --workers the workers start one after another).
 */
export async function startServe(
  args: string[],
  opts: { cwd?: string; expectListeners?: number; env?: NodeJS.ProcessEnv; allowRoot?: boolean; timeoutMs?: number } = {},
): Promise<ServeProcess> {
  const child = spawn(process.execPath, poplarArgs(serveArgs(['serve', ...args], opts.allowRoot)), {
    cwd: opts.cwd ?? ROOT,
    env: { ...process.env, ...opts.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  const ports: { port: number; tls: string }[] = [];
  const want = opts.expectListeners ?? 2;
  await new Promise<void>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`server did not start:\n${stderr}`)), opts.timeoutMs ?? 30_000);
    child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr!.on('data', (d: Buffer) => {
      stderr += d.toString();
      for (const line of d.toString().split('\n')) {
        if (!line.includes('"listening"')) continue;
        try {
          const j = JSON.parse(line) as { port: number; tls: string };
          ports.push(j);
        } catch {
          // partial line; the next chunk completes it
        }
      }
      if (ports.length >= want) {
        clearTimeout(t);
        resolve();
      }
    });
    child.on('exit', (code) => {
      clearTimeout(t);
      reject(new Error(`server exited with ${code}:\n${stderr}`));
    });
  });
  // The demo-user banner is printed right after the listeners come up.
  await new Promise((r) => setTimeout(r, 50));
  return {
    child,
    stdout: () => stdout,
    stderr: () => stderr,
    plainPort: ports.find((p) => p.tls === 'stls')?.port ?? 0,
    tlsPort: ports.find((p) => p.tls === 'implicit')?.port ?? 0,
    stop: (signal = 'SIGTERM') =>
      new Promise((resolve) => {
        if (child.exitCode !== null || child.signalCode !== null) return resolve(child.exitCode);
        child.once('exit', (code) => resolve(code));
        child.kill(signal);
      }),
  };
}
