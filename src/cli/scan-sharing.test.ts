import { EventEmitter } from 'node:events';
import type { Worker } from 'node:cluster';
import { describe, expect, it } from 'vitest';
import { SCAN_MESSAGE, ScanRelay } from './scan-sharing.js';

/** A worker as the primary sees it: messages in, messages sent out. */
class FakeWorker extends EventEmitter {
  readonly sent: unknown[] = [];
  connected = true;
  isConnected(): boolean {
    return this.connected;
  }
  send(m: unknown, _handle?: unknown, cb?: (e: Error | null) => void): boolean {
    this.sent.push(m);
    cb?.(null);
    return true;
  }
}

function cluster(n: number): { relay: ScanRelay; workers: FakeWorker[]; add(): FakeWorker } {
  const relay = new ScanRelay();
  const workers: FakeWorker[] = [];
  const add = (): FakeWorker => {
    const w = new FakeWorker();
    workers.push(w);
    relay.serve(w as unknown as Worker, () => workers as unknown as Worker[]);
    return w;
  };
  for (let i = 0; i < n; i++) add();
  return { relay, workers, add };
}

const notice = (dir: string, key = 'k1'): unknown => ({ type: SCAN_MESSAGE, dir, key });

describe('serve --workers: saved maildrop scans announced through the primary', () => {
  it('goes to every other worker, and to a worker that reports ready later (a replacement)', () => {
    const { workers, add } = cluster(3);
    const [a, b, c] = workers as [FakeWorker, FakeWorker, FakeWorker];
    a.emit('message', notice('/mail/big'));
    expect(a.sent).toEqual([]);
    expect(b.sent).toEqual([notice('/mail/big')]);
    expect(c.sent).toEqual([notice('/mail/big')]);
    b.emit('message', notice('/mail/big', 'k2')); // the same maildrop under a newer key
    c.connected = false; // gone: nothing is sent to it
    b.emit('message', notice('/mail/other'));
    expect(c.sent).toHaveLength(2);
    const d = add();
    d.emit('message', { type: 'ready' });
    expect(d.sent).toEqual([notice('/mail/big', 'k2'), notice('/mail/other')]);
  });

  it('ignores what is not an announcement, or a malformed one', () => {
    const { workers } = cluster(2);
    const [a, b] = workers as [FakeWorker, FakeWorker];
    for (const m of [
      null,
      'x',
      { type: 'poplar:limits', id: 1 },
      { type: SCAN_MESSAGE },
      { type: SCAN_MESSAGE, dir: '', key: 'k' },
      { type: SCAN_MESSAGE, dir: 'a\0b', key: 'k' },
      { type: SCAN_MESSAGE, dir: 'x'.repeat(5000), key: 'k' },
      { type: SCAN_MESSAGE, dir: '/mail/u', key: 7 },
      { type: SCAN_MESSAGE, dir: '/mail/u', key: 'k'.repeat(600) },
    ]) {
      a.emit('message', m);
    }
    expect(b.sent).toEqual([]);
    b.emit('message', { type: 'ready' }); // nothing was kept to replay
    expect(b.sent).toEqual([]);
  });
});
