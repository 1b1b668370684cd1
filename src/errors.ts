/**
 * What a store or an authenticator says when it cannot do what was asked, in
 * no protocol's words. Each front end maps the kind to its own answer: the
 * POP3 server to RFC 2449/3206 response codes (respCodeFor in
 * src/protocol/codes.ts), a
 * delivery front end to SMTP status codes. The message is safe to show to a
 * client; details for the log go into `cause`.
 */
export type FailureKind =
  /** The mailbox is locked by another session or process. */
  | 'in-use'
  /** Worth trying again later: a backend is unreachable, a file system is full, a lock is stuck. */
  | 'temporary'
  /** Will fail again the same way: a user name no mailbox can have, a broken mailbox. */
  | 'permanent'
  /** The credentials were checked and are wrong. */
  | 'auth-failed'
  /** No such user or mailbox. */
  | 'not-found'
  /** One message of a mailbox cannot be read: removed by another process, or unreadable. */
  | 'message-unavailable'
  /** The mailbox is over its quota. */
  | 'quota';

export class MailError extends Error {
  readonly kind: FailureKind;
  constructor(kind: FailureKind, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'MailError';
    this.kind = kind;
  }
}

export class InUseError extends MailError {
  constructor(message = 'Mailbox is locked by another session', options?: { cause?: unknown }) {
    super('in-use', message, options);
    this.name = 'InUseError';
  }
}

export class TemporaryFailure extends MailError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('temporary', message, options);
    this.name = 'TemporaryFailure';
  }
}

export class PermanentFailure extends MailError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('permanent', message, options);
    this.name = 'PermanentFailure';
  }
}

export class AuthenticationFailed extends MailError {
  constructor(message = 'Authentication failed', options?: { cause?: unknown }) {
    super('auth-failed', message, options);
    this.name = 'AuthenticationFailed';
  }
}

export class NotFoundError extends MailError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('not-found', message, options);
    this.name = 'NotFoundError';
  }
}

export class MessageUnavailable extends MailError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('message-unavailable', message, options);
    this.name = 'MessageUnavailable';
  }
}

export class QuotaExceeded extends MailError {
  constructor(message = 'Mailbox is over its quota', options?: { cause?: unknown }) {
    super('quota', message, options);
    this.name = 'QuotaExceeded';
  }
}
