/**
 * The Maildir sink's deliverBuffer and group flush with the native module
 * switched off (POPLAR_NO_NATIVE=1, set before anything is loaded): the
 * JavaScript write path, which must behave as the native one does
 * (sinks-maildir.test.ts runs the same cases with it).
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';

vi.hoisted(() => {
  process.env['POPLAR_NO_NATIVE'] = '1';
});

import { native } from '../../src/protocol/native.js';
import { deliverBufferCases } from './maildir-buffer-cases.js';

let root: string;
let box: string;

beforeEach(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-sink-md-js-'));
  box = path.join(root, 'Maildir');
});

afterEach(async () => {
  vi.restoreAllMocks();
  await fs.rm(root, { recursive: true, force: true });
});

describe('MaildirSink without the native module', () => {
  it('runs with the native module switched off', () => {
    expect(native).toBeUndefined();
  });

  deliverBufferCases(() => ({ root, box }));
});
