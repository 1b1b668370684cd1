/**
 * Messages between the benchmark driver (bench/run.ts) and its load-generator
 * processes (bench/load.ts), sent over the Node IPC channel.
 */

export interface BenchUser {
  name: string;
  password: string;
}

/** connect, USER, PASS, STAT, QUIT in a loop; each client takes a user nobody else is using. */
export interface SessionsJob {
  kind: 'sessions';
  port: number;
  users: BenchUser[];
  clients: number;
  /** Epoch ms at which every client starts (the same value for all generator processes). */
  startAt: number;
  warmupMs: number;
  durationMs: number;
}

export interface SessionsResult {
  kind: 'sessions';
  /** Sessions that completed inside the measuring window. */
  sessions: number;
  errors: number;
  errorSamples: string[];
  /** Latency of each session counted in `sessions`, microseconds. */
  latenciesUs: number[];
  /** Generator CPU time during the measuring window, microseconds. */
  cpuUserUs: number;
  cpuSystemUs: number;
  windowMs: number;
}

/** One user per client; each session logs in, pipelines RETR 1..N and quits, until the time is up. */
export interface RetrJob {
  kind: 'retr';
  port: number;
  /** One entry per client: its user and the exact number of body bytes (dot-stuffed, CRLF) of each message. */
  clients: { user: BenchUser; expectedBodyBytes: number[] }[];
  /** RETR commands in flight per connection. */
  window: number;
  startAt: number;
  warmupMs: number;
  durationMs: number;
}

export interface RetrResult {
  kind: 'retr';
  /** Bytes received inside the measuring window. */
  bytes: number;
  /** RETR replies completed inside the window. */
  messages: number;
  sessions: number;
  errors: number;
  /** RETR replies whose body length differed from the expected one. */
  mismatches: number;
  errorSamples: string[];
  cpuUserUs: number;
  cpuSystemUs: number;
  windowMs: number;
}

/** Login + STAT + LIST on a big maildrop, `runs` times, each on a fresh connection. */
export interface BigDropJob {
  kind: 'bigdrop';
  port: number;
  user: BenchUser;
  runs: number;
  timeoutMs: number;
}

export interface BigDropRun {
  /** From connect() until the end of the LIST reply. */
  totalMs: number;
  /** Until the +OK to PASS (Dovecot answers it before it syncs the mailbox). */
  loginMs: number;
  /** Until the STAT reply. */
  statMs: number;
  statMessages: number;
  listLines: number;
}

export interface BigDropResult {
  kind: 'bigdrop';
  runs: BigDropRun[];
  cpuUserUs: number;
  cpuSystemUs: number;
}

/** Open `count` connections, wait for each greeting, and hold them until told to release. */
export interface IdleJob {
  kind: 'idle';
  port: number;
  count: number;
  /** Connection attempts in flight at once. */
  concurrency: number;
  /** Log each connection in (USER, PASS) as the user of the same index, so it is held in the TRANSACTION state. */
  login?: BenchUser[];
}

export interface IdleReady {
  kind: 'idle-ready';
  opened: number;
  errors: number;
  errorSamples: string[];
  cpuUserUs: number;
  cpuSystemUs: number;
}

export interface ReleaseCommand {
  kind: 'release';
}

/** Ask every held idle connection for CAPA (valid before login) and wait for the whole reply. */
export interface IdleCheckCommand {
  kind: 'idle-check';
  timeoutMs: number;
  /** STAT instead of CAPA (logged-in connections: the maildrop must still answer). */
  stat?: boolean;
}

export interface IdleChecked {
  kind: 'idle-checked';
  /** Held connections still open when the check began. */
  open: number;
  /** Of those, how many answered CAPA completely. */
  answered: number;
  errors: number;
  errorSamples: string[];
}

export type Job = SessionsJob | RetrJob | BigDropJob | IdleJob;
export type ToWorker = Job | ReleaseCommand | IdleCheckCommand;
export type FromWorker =
  | SessionsResult
  | RetrResult
  | BigDropResult
  | IdleReady
  | IdleChecked
  | { kind: 'released' }
  | { kind: 'ready' }
  | { kind: 'failed'; message: string };
