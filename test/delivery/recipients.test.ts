/** Recipient rules, quota resolution and the per-user quota of the passwd-file. */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { PasswdFileAuthenticator } from '../../src/auth/passwd-file/authenticator.js';
import { candidateNames, quotaFor, resolveRecipient } from '../../src/delivery/recipients.js';
import { exitCodeFor, smtpReplyFor } from '../../src/delivery/smtp-replies.js';
import { withTraceHeaders } from '../../src/delivery/trace-headers.js';
import { InUseError, NotFoundError, PermanentFailure, QuotaExceeded, TemporaryFailure } from '../../src/errors.js';

describe('recipient rules', () => {
  it('tries the whole address (domain in lower case), then the local part, each without the +extension, then all in lower case', () => {
    expect(candidateNames('Alice+x@Example.ORG', { format: 'auto', delimiter: '+' })).toEqual(['Alice+x@example.org', 'Alice@example.org', 'Alice+x', 'Alice', 'alice+x@example.org', 'alice@example.org', 'alice+x', 'alice']);
    expect(candidateNames('alice@example.org', { format: 'full', delimiter: '' })).toEqual(['alice@example.org']);
    expect(candidateNames('alice@example.org', { format: 'local', delimiter: '' })).toEqual(['alice']);
    expect(candidateNames('alice', { format: 'full', delimiter: '' })).toEqual(['alice']);
    expect(candidateNames('+x@example.org', { format: 'local', delimiter: '+' })).toEqual(['+x']);
  });

  it('finds users in the passwd-file with their quota fields; a user named by the whole address wins', async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-rcpt-'));
    const file = path.join(dir, 'users');
    await fs.writeFile(file, 'alice:{PLAIN}x::::::quota_bytes=1000 quota_messages=5\nalice@example.org:{PLAIN}x\nbob:{PLAIN}x::::::quota_bytes=lots\n');
    const auth = new PasswdFileAuthenticator(file);
    const rules = { format: 'auto' as const, delimiter: '' };
    expect(await resolveRecipient(auth, 'alice', rules)).toEqual({ username: 'alice', quota: { bytes: 1000, messages: 5 } });
    expect(await resolveRecipient(auth, 'alice@example.org', rules)).toEqual({ username: 'alice@example.org' });
    expect(await resolveRecipient(auth, 'alice@other.example', rules)).toEqual({ username: 'alice', quota: { bytes: 1000, messages: 5 } });
    expect(await resolveRecipient(auth, 'alice@other.example', { format: 'full', delimiter: '' })).toBeUndefined();
    expect(await resolveRecipient(auth, 'bob', rules)).toEqual({ username: 'bob' }); // an unusable value: the default applies
    expect(await resolveRecipient(auth, 'carol', rules)).toBeUndefined();
    const defaults = { max_bytes: 50, max_messages: 0 };
    expect(quotaFor({ username: 'alice', quota: { bytes: 1000, messages: 5 } }, defaults)).toEqual({ bytes: 1000, messages: 5 });
    expect(quotaFor({ username: 'bob' }, defaults)).toEqual({ bytes: 50, messages: 0 });
    expect(quotaFor({ username: 'x', quota: { bytes: 0 } }, defaults)).toEqual({ bytes: 0, messages: 0 });
    await fs.rm(dir, { recursive: true, force: true });
  });
});

describe('SMTP replies and exit codes from the typed failures', () => {
  it('maps each kind', () => {
    expect(smtpReplyFor(new QuotaExceeded(), 'temporary')).toMatchObject({ code: 452, status: '4.2.2' });
    expect(smtpReplyFor(new QuotaExceeded(), 'permanent')).toMatchObject({ code: 552, status: '5.2.2' });
    expect(smtpReplyFor(new TemporaryFailure('x'), 'permanent')).toMatchObject({ code: 451, status: '4.3.0' });
    expect(smtpReplyFor(new InUseError(), 'temporary')).toMatchObject({ code: 451, status: '4.3.0' });
    expect(smtpReplyFor(new NotFoundError('x'), 'temporary')).toMatchObject({ code: 550, status: '5.1.1' });
    expect(smtpReplyFor(new Error('EIO'), 'temporary')).toMatchObject({ code: 451, status: '4.3.0', text: 'Temporary failure in the mail store' });
    expect(exitCodeFor(new NotFoundError('x'), 'temporary')).toBe(67);
    expect(exitCodeFor(new PermanentFailure('x'), 'temporary')).toBe(73);
    expect(exitCodeFor(new QuotaExceeded(), 'temporary')).toBe(75);
    expect(exitCodeFor(new QuotaExceeded(), 'permanent')).toBe(73);
    expect(exitCodeFor(new Error('boom'), 'permanent')).toBe(75);
  });

  it('adds the trace headers with the line ends the message has', () => {
    expect(withTraceHeaders(Buffer.from('A: b\r\n\r\nx\r\n'), 's@x', 'r@y').toString()).toBe('Return-Path: <s@x>\r\nDelivered-To: r@y\r\nA: b\r\n\r\nx\r\n');
    expect(withTraceHeaders(Buffer.from('A: b\n\nx\n'), '', undefined).toString()).toBe('Return-Path: <>\nA: b\n\nx\n');
    expect(withTraceHeaders(Buffer.from(''), undefined, 'r').toString()).toBe('Delivered-To: r\r\n');
  });
});
