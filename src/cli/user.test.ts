import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { Readable } from 'node:stream';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Command, CommanderError } from 'commander';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { verifyPassword } from '../auth/schemes.js';
import {
  DEFAULT_USERS_FILE,
  EX_CANTCREAT,
  EX_DATAERR,
  EX_NOUSER,
  UserCommandError,
  readPasswordLine,
  registerUserCommands,
  userAdd,
  userDel,
  userList,
  userPasswd,
} from './user.js';

const ROOT = resolve(fileURLToPath(new URL('.', import.meta.url)), '../..');

let dir: string;
let file: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'poplar-cli-'));
  file = join(dir, 'users');
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function exitCode(p: Promise<unknown>): Promise<number | undefined> {
  try {
    await p;
    return undefined;
  } catch (e) {
    if (e instanceof UserCommandError) return e.exitCode;
    throw e;
  }
}

async function secretOf(name: string): Promise<string | undefined> {
  const line = (await readFile(file, 'utf8')).split('\n').find((l) => l.startsWith(`${name}:`));
  return line?.split(':')[1];
}

describe('user actions', () => {
  it('add, list, passwd, del', async () => {
    await userAdd(file, 'alice', 'pencil', 'SHA512-CRYPT');
    await userAdd(file, 'bob', 'crayon');
    expect(await userList(file)).toEqual(['alice', 'bob']);
    expect((await stat(file)).mode & 0o777).toBe(0o600);
    expect(await secretOf('alice')).toMatch(/^\{SHA512-CRYPT\}\$6\$/);
    expect(await secretOf('bob')).toMatch(/^\{ARGON2ID\}\$argon2id\$/);
    expect(await verifyPassword('crayon', (await secretOf('bob')) ?? '')).toBe(true);

    await userPasswd(file, 'alice', 'marker', 'BLF-CRYPT');
    expect(await verifyPassword('marker', (await secretOf('alice')) ?? '')).toBe(true);
    expect(await verifyPassword('pencil', (await secretOf('alice')) ?? '')).toBe(false);

    await userDel(file, 'alice');
    expect(await userList(file)).toEqual(['bob']);
  });

  it('maps failures to sysexits codes', async () => {
    await userAdd(file, 'alice', 'pencil', 'PLAIN');
    expect(await exitCode(userPasswd(file, 'nobody', 'x', 'PLAIN'))).toBe(EX_NOUSER);
    expect(await exitCode(userDel(file, 'nobody'))).toBe(EX_NOUSER);
    expect(await exitCode(userAdd(file, 'bad name', 'x', 'PLAIN'))).toBe(EX_DATAERR);
    expect(await exitCode(userAdd(file, 'a:b', 'x', 'PLAIN'))).toBe(EX_DATAERR);
    expect(await exitCode(userDel(file, '.x'))).toBe(EX_DATAERR);
    expect(await exitCode(userAdd(file, 'alice', 'x', 'PLAIN'))).toBe(EX_DATAERR);
    expect(await exitCode(userAdd(file, 'carol', '', 'PLAIN'))).toBe(EX_DATAERR);
    expect(await exitCode(userAdd(join(file, 'not-a-dir', 'users'), 'carol', 'x', 'PLAIN'))).toBe(EX_CANTCREAT);
    expect(await userList(file)).toEqual(['alice']);
  });
});

describe('readPasswordLine', () => {
  it.each([
    ['secret\n', 'secret'],
    ['secret\r\n', 'secret'],
    ['secret', 'secret'],
    ['sec ret\nsecond line\n', 'sec ret'],
    ['pässwörd\n', 'pässwörd'],
  ])('%j → %j', async (input, expected) => {
    expect(await readPasswordLine(Readable.from([Buffer.from(input)]))).toBe(expected);
  });
  it('handles a line split across chunks', async () => {
    expect(await readPasswordLine(Readable.from([Buffer.from('ab'), Buffer.from([0xc3]), Buffer.from([0xa4, 0x0a])]))).toBe('abä');
  });
  it('fails on empty input', async () => {
    await expect(readPasswordLine(Readable.from([]))).rejects.toThrow(UserCommandError);
  });
});

describe('commander wiring (in process)', () => {
  function program(defaultFile?: string): { program: Command; out: string[]; err: string[]; codes: number[] } {
    const out: string[] = [];
    const err: string[] = [];
    const codes: number[] = [];
    const p = new Command();
    p.exitOverride();
    p.configureOutput({ writeOut: (s) => out.push(s), writeErr: (s) => err.push(s) });
    registerUserCommands(p, { ...(defaultFile !== undefined ? { defaultUsersFile: defaultFile } : {}), exit: (c) => codes.push(c) });
    return { program: p, out, err, codes };
  }

  it('lists users and reports errors as one line with the right exit code', async () => {
    await userAdd(file, 'alice', 'pencil', 'PLAIN');
    await userAdd(file, 'bob', 'pencil', 'PLAIN');
    const a = program();
    await a.program.parseAsync(['user', 'list', '--users', file], { from: 'user' });
    expect(a.out.join('')).toBe('alice\nbob\n');

    expect(a.codes).toEqual([]);

    const b = program();
    await b.program.parseAsync(['user', 'del', 'nobody', '--users', file], { from: 'user' });
    expect(b.codes).toEqual([EX_NOUSER]);
    expect(b.err).toEqual(['poplar user del: no such user: nobody\n']);

    const c = program();
    await c.program.parseAsync(['user', 'del', 'bob', '--users', file], { from: 'user' });
    expect(await userList(file)).toEqual(['alice']);

    const d = program();
    await d.program.parseAsync(['user', 'passwd', 'nobody', '--users', file, '--password-stdin'], { from: 'user' });
    expect(d.codes).toEqual([EX_NOUSER]);

    const f = program();
    await f.program.parseAsync(['user', 'del', 'a b', '--users', file], { from: 'user' });
    expect(f.codes).toEqual([EX_DATAERR]);
    expect(f.err).toHaveLength(1);
  });

  it('requires --users unless a default is given', async () => {
    const a = program();
    const e = await a.program.parseAsync(['user', 'list'], { from: 'user' }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(CommanderError);
    expect((e as CommanderError).code).toBe('commander.missingMandatoryOptionValue');

    const b = program(DEFAULT_USERS_FILE);
    const opt = b.program.commands.find((c) => c.name() === 'user')?.commands.find((c) => c.name() === 'list')?.opts();
    expect(opt).toEqual({ users: 'poplar-data/users' });
  });

  it('rejects an unknown --scheme', async () => {
    const a = program();
    const e = await a.program.parseAsync(['user', 'add', 'x', '--users', file, '--scheme', 'MD5'], { from: 'user' }).catch((x: unknown) => x);
    expect((e as CommanderError).code).toBe('commander.invalidArgument');
  });
});

function runMain(args: string[], stdin: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return spawnCollect(join(ROOT, 'node_modules/.bin/tsx'), [join(ROOT, 'src/cli/main.ts'), ...args], stdin);
}

function spawnCollect(cmd: string, argv: string[], stdin: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolveRun, reject) => {
    const child = spawn(cmd, argv, { cwd: ROOT, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolveRun({ code, stdout, stderr }));
    child.stdin.end(stdin);
  });
}

function runCli(args: string[], stdin: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const script = [
    `import { Command } from 'commander';`,
    `import { registerUserCommands } from ${JSON.stringify(pathToFileURL(join(ROOT, 'src/cli/user.ts')).href)};`,
    `const program = new Command('poplar');`,
    `registerUserCommands(program);`,
    `await program.parseAsync(process.argv.slice(1), { from: 'user' });`,
  ].join('\n');
  return spawnCollect(join(ROOT, 'node_modules/.bin/tsx'), ['--input-type=module', '-e', script, ...args], stdin);
}

describe('end to end through tsx', () => {
  it('user add --password-stdin, list, passwd, del', async () => {
    const add = await runCli(['user', 'add', 'alice', '--users', file, '--password-stdin', '--scheme', 'sha256-crypt'], 'pen cil\r\nignored\n');
    expect(add).toMatchObject({ code: 0, stderr: '' });
    const secret = (await secretOf('alice')) ?? '';
    expect(secret).toMatch(/^\{SHA256-CRYPT\}/);
    expect(await verifyPassword('pen cil', secret)).toBe(true);

    const dup = await runCli(['user', 'add', 'alice', '--users', file, '--password-stdin'], 'x\n');
    expect(dup.code).toBe(EX_DATAERR);
    expect(dup.stderr).toBe('poplar user add: user alice already exists\n');

    const list = await runCli(['user', 'list', '--users', file], '');
    expect(list).toMatchObject({ code: 0, stdout: 'alice\n' });

    const pw = await runCli(['user', 'passwd', 'alice', '--users', file, '--password-stdin'], 'crayon\n');
    expect(pw.code).toBe(0);
    expect(await verifyPassword('crayon', (await secretOf('alice')) ?? '')).toBe(true);

    const del = await runCli(['user', 'del', 'alice', '--users', file], '');
    expect(del.code).toBe(0);
    expect(await readFile(file, 'utf8')).toBe('');
    const again = await runCli(['user', 'del', 'alice', '--users', file], '');
    expect(again.code).toBe(EX_NOUSER);
  });

  it.skipIf(!existsSync(join(ROOT, 'src/cli/main.ts')))('keeps the sysexits codes when run through src/cli/main.ts', async () => {
    const add = await runMain(['user', 'add', 'zoe', '--users', file, '--password-stdin', '--scheme', 'PLAIN'], 'x\n');
    expect(add).toMatchObject({ code: 0, stderr: '' });
    const del = await runMain(['user', 'del', 'nobody', '--users', file], '');
    expect(del.code).toBe(EX_NOUSER);
    expect(del.stderr).toBe('poplar user del: no such user: nobody\n');
  });

  it('refuses to prompt without a terminal', async () => {
    await writeFile(file, '');
    const r = await runCli(['user', 'add', 'bob', '--users', file], 'x\n');
    expect(r.code).toBe(64);
    expect(r.stderr).toMatch(/not a terminal; use --password-stdin/);
  });
});
