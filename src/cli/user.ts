/**
 * `poplar user add|passwd|del|list`: manage a Dovecot passwd-file.
 *
 * Exit codes (sysexits.h): 0 ok, 64 usage (no TTY to prompt on), 65 bad
 * name / password / existing user, 66 users file unreadable, 67 unknown
 * user, 73 cannot write the users file, 75 file locked by another writer.
 */
import { createInterface } from 'node:readline';
import { Writable } from 'node:stream';
import { Command, InvalidArgumentError, Option } from 'commander';
import { HASH_SCHEMES, type HashScheme } from '../auth/scheme-names.js';
import { EX_CANTCREAT, EX_DATAERR, EX_NOUSER, EX_SOFTWARE, EX_TEMPFAIL, EX_USAGE } from './exit-codes.js';
import { PasswdFileError, addUser, listUsers, removeUser, setPassword, usernameProblem } from '../auth/passwd-file/passwd-file.js';

export const DEFAULT_USERS_FILE = 'poplar-data/users';

export { EX_CANTCREAT, EX_DATAERR, EX_NOUSER, EX_SOFTWARE, EX_TEMPFAIL, EX_USAGE };
/** sysexits.h EX_NOINPUT (not in ./exit-codes.js) */
export const EX_NOINPUT = 66;

/** An error with the exit code the CLI should use. */
export class UserCommandError extends Error {
  readonly exitCode: number;
  constructor(message: string, exitCode: number, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'UserCommandError';
    this.exitCode = exitCode;
  }
}

function toCommandError(e: unknown): UserCommandError {
  if (e instanceof UserCommandError) return e;
  if (e instanceof PasswdFileError) {
    const code = {
      INVALID_NAME: EX_DATAERR,
      INVALID_FIELD: EX_DATAERR,
      USER_EXISTS: EX_DATAERR,
      NO_SUCH_USER: EX_NOUSER,
      READ_FAILED: EX_NOINPUT,
      WRITE_FAILED: EX_CANTCREAT,
      LOCKED: EX_TEMPFAIL,
    }[e.code];
    return new UserCommandError(e.message, code, { cause: e });
  }
  if (e instanceof RangeError) return new UserCommandError(e.message, EX_DATAERR, { cause: e });
  return new UserCommandError(e instanceof Error ? e.message : String(e), EX_SOFTWARE, { cause: e });
}

function checkName(name: string): void {
  const problem = usernameProblem(name);
  if (problem) throw new UserCommandError(`invalid user name ${JSON.stringify(name)}: ${problem}`, EX_DATAERR);
}

function checkPassword(password: string): void {
  if (password === '') throw new UserCommandError('empty password', EX_DATAERR);
  if (/[\r\n\0]/.test(password)) throw new UserCommandError('password contains CR, LF or NUL', EX_DATAERR);
}

// ---------------------------------------------------------------------------
// actions (throw UserCommandError)

export async function userAdd(file: string, name: string, password: string, scheme: HashScheme = 'ARGON2ID'): Promise<void> {
  try {
    checkName(name);
    checkPassword(password);
    await addUser(file, { username: name, password: await (await import('../auth/schemes.js')).hashPassword(password, scheme) });
  } catch (e) {
    throw toCommandError(e);
  }
}

export async function userPasswd(file: string, name: string, password: string, scheme: HashScheme = 'ARGON2ID'): Promise<void> {
  try {
    checkName(name);
    checkPassword(password);
    await setPassword(file, name, await (await import('../auth/schemes.js')).hashPassword(password, scheme));
  } catch (e) {
    throw toCommandError(e);
  }
}

export async function userDel(file: string, name: string): Promise<void> {
  try {
    checkName(name);
    await removeUser(file, name);
  } catch (e) {
    throw toCommandError(e);
  }
}

export async function userList(file: string): Promise<string[]> {
  try {
    return await listUsers(file);
  } catch (e) {
    throw toCommandError(e);
  }
}

// ---------------------------------------------------------------------------
// password input

/** Reads up to the first LF (or EOF) and strips a trailing CR. */
export async function readPasswordLine(input: AsyncIterable<Buffer | string>): Promise<string> {
  const chunks: Buffer[] = [];
  let sawAnything = false;
  for await (const chunk of input) {
    sawAnything = true;
    const b = typeof chunk === 'string' ? Buffer.from(chunk, 'utf8') : chunk;
    const nl = b.indexOf(0x0a);
    if (nl >= 0) {
      chunks.push(b.subarray(0, nl));
      break;
    }
    chunks.push(b);
  }
  if (!sawAnything) throw new UserCommandError('no password on standard input', EX_DATAERR);
  return Buffer.concat(chunks).toString('utf8').replace(/\r$/, '');
}

/** Prompts on the terminal without echo. */
async function promptHidden(query: string): Promise<string> {
  const input = process.stdin;
  if (!input.isTTY) throw new UserCommandError('standard input is not a terminal; use --password-stdin', EX_USAGE);
  let muted = false;
  const output = new Writable({
    write(chunk: Buffer | string, _enc, cb): void {
      if (!muted) process.stderr.write(chunk);
      cb();
    },
  });
  const rl = createInterface({ input, output, terminal: true });
  try {
    return await new Promise<string>((resolve, reject) => {
      rl.on('SIGINT', () => reject(new UserCommandError('interrupted', 130)));
      rl.on('close', () => reject(new UserCommandError('no password entered', EX_DATAERR)));
      rl.question(query, resolve);
      muted = true;
    });
  } finally {
    muted = false;
    rl.close();
    process.stderr.write('\n');
  }
}

async function obtainPassword(fromStdin: boolean): Promise<string> {
  if (fromStdin) return readPasswordLine(process.stdin);
  const first = await promptHidden('New password: ');
  checkPassword(first);
  const second = await promptHidden('Retype new password: ');
  if (first !== second) throw new UserCommandError('passwords do not match', EX_DATAERR);
  return first;
}

// ---------------------------------------------------------------------------
// commander wiring

interface UserOpts {
  users: string;
}
interface PasswordOpts extends UserOpts {
  passwordStdin?: boolean;
  scheme: HashScheme;
}

function parseScheme(value: string): HashScheme {
  const up = value.toUpperCase();
  const found = HASH_SCHEMES.find((s) => s === up);
  if (!found) throw new InvalidArgumentError(`choose one of ${HASH_SCHEMES.join(', ')}`);
  return found;
}

/** Errors are reported here, not through cmd.error(): a CommanderError's exit code may be remapped by the caller. */
async function run(cmd: Command, exit: (code: number) => void, fn: () => Promise<void>): Promise<void> {
  try {
    await fn();
  } catch (e) {
    const err = toCommandError(e);
    const writeErr = cmd.configureOutput().writeErr ?? ((s: string) => process.stderr.write(s));
    writeErr(`poplar user ${cmd.name()}: ${err.message.replace(/[\r\n]+/g, ' ')}\n`);
    exit(err.exitCode);
  }
}

export interface RegisterUserCommandsOptions {
  /** Makes --users optional with this default (e.g. DEFAULT_USERS_FILE). */
  readonly defaultUsersFile?: string;
  /** Called with the exit code after an error was printed. Default: sets process.exitCode. */
  readonly exit?: (code: number) => void;
}

/**
 * Adds `user add|passwd|del|list`. `--users FILE` is required unless a
 * default users file is given (a string second argument is shorthand for
 * { defaultUsersFile }).
 *
 * Failures print one line through the command's writeErr and call
 * options.exit(code) (default: set process.exitCode), then the action
 * returns normally. `list` writes through writeOut, so
 * program.configureOutput() before this call captures both.
 */
export function registerUserCommands(program: Command, options: string | RegisterUserCommandsOptions = {}): void {
  const opts0: RegisterUserCommandsOptions = typeof options === 'string' ? { defaultUsersFile: options } : options;
  const defaultUsersFile = opts0.defaultUsersFile;
  const exit =
    opts0.exit ??
    ((code: number): void => {
      process.exitCode = code;
    });
  const usersOption = (): Option => {
    const o = new Option('--users <file>', 'passwd-file with the users');
    return defaultUsersFile !== undefined ? o.default(defaultUsersFile) : o.makeOptionMandatory();
  };
  const schemeOption = (): Option =>
    new Option('--scheme <scheme>', `password scheme (${HASH_SCHEMES.join(', ')})`).argParser(parseScheme).default('ARGON2ID');
  const stdinOption = (): Option => new Option('--password-stdin', 'read the password as one line from standard input');

  const user = program.command('user').description('manage users in a passwd-file');

  user
    .command('add')
    .description('add a user')
    .argument('<name>', 'user name (case-sensitive)')
    .addOption(usersOption())
    .addOption(stdinOption())
    .addOption(schemeOption())
    .action(async (name: string, opts: PasswordOpts, cmd: Command) =>
      run(cmd, exit, async () => {
        checkName(name);
        await userAdd(opts.users, name, await obtainPassword(opts.passwordStdin === true), opts.scheme);
      }),
    );

  user
    .command('passwd')
    .description("change a user's password")
    .argument('<name>', 'user name')
    .addOption(usersOption())
    .addOption(stdinOption())
    .addOption(schemeOption())
    .action(async (name: string, opts: PasswordOpts, cmd: Command) =>
      run(cmd, exit, async () => {
        checkName(name);
        // fail before prompting when the user does not exist (setPassword checks again under the lock)
        const known = await listUsers(opts.users).catch(() => [] as string[]);
        if (!known.includes(name)) throw new UserCommandError(`no such user: ${name}`, EX_NOUSER);
        await userPasswd(opts.users, name, await obtainPassword(opts.passwordStdin === true), opts.scheme);
      }),
    );

  user
    .command('del')
    .description('delete a user')
    .argument('<name>', 'user name')
    .addOption(usersOption())
    .action(async (name: string, opts: UserOpts, cmd: Command) => run(cmd, exit, () => userDel(opts.users, name)));

  user
    .command('list')
    .description('print one user name per line')
    .addOption(usersOption())
    .action(async (opts: UserOpts, cmd: Command) =>
      run(cmd, exit, async () => {
        const names = await userList(opts.users);
        const write = cmd.configureOutput().writeOut ?? ((s: string) => process.stdout.write(s));
        if (names.length > 0) write(names.map((n) => `${n}\n`).join(''));
      }),
    );
}
