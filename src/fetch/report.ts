/** What one fetch of one account did, and who hears of its progress. */

export interface AccountReport {
  readonly account: string;
  ok: boolean;
  /** sysexits code for this account (0 when ok). */
  exitCode: number;
  error?: string;
  /** Messages the server listed. */
  onServer: number;
  /** Messages not in the ledger (or all, with fetch = "all") that were candidates for delivery. */
  candidates: number;
  delivered: number;
  discarded: number;
  skipped: number;
  /** Deletions the server confirmed (QUIT answered +OK). */
  deleted: number;
  /** Octets delivered (as the server announced them). */
  bytes: number;
  /** Pending deliveries from an interrupted run found delivered (recorded, not fetched again). */
  recovered: number;
  /** Interrupted by a stop request after finishing a message. */
  stopped: boolean;
  elapsedMs: number;
}

export interface ProgressListener {
  accountStarted?(account: string, messages: number, octets: number): void;
  messageDone?(account: string, octets: number): void;
}

export function newReport(account: string): AccountReport {
  return { account, ok: false, exitCode: 0, onServer: 0, candidates: 0, delivered: 0, discarded: 0, skipped: 0, deleted: 0, bytes: 0, recovered: 0, stopped: false, elapsedMs: 0 };
}
