import { EventEmitter } from 'node:events';
import { describe, expect, it } from 'vitest';
import { ClusterLoginDelayStore, ClusterThrottleStore, LIMITS_MESSAGE, PrimaryClient, PrimaryLimits, parseLimitsRequest, type PrimaryChannel } from './throttle-cluster.js';
import { LoginThrottle } from './throttle.js';

/** A worker's channel wired to a PrimaryLimits in this process (JSON on the way, as over IPC). */
function channelTo(primary: PrimaryLimits, opts: { silent?: boolean } = {}): PrimaryChannel & { sent: unknown[] } {
  const ee = new EventEmitter();
  const sent: unknown[] = [];
  return {
    sent,
    connected: true,
    send(m: unknown): boolean {
      const wire = JSON.parse(JSON.stringify(m)) as unknown;
      sent.push(wire);
      if (!opts.silent) void primary.answer(wire).then((r) => r && setImmediate(() => ee.emit('message', JSON.parse(JSON.stringify(r)))));
      return true;
    },
    on(event: 'message', l: (m: unknown) => void) {
      ee.on(event, l);
      return this;
    },
  };
}

describe('counters held by the --workers primary', () => {
  it('add up failures from several workers, and block on any of them', async () => {
    const primary = new PrimaryLimits();
    const workers = [0, 1, 2].map(() => new LoginThrottle({ store: new ClusterThrottleStore(new PrimaryClient(channelTo(primary))), ipBlockAfter: 3, baseDelayMs: 100 }));
    expect(await workers[0]!.recordFailure('192.0.2.1', 'alice')).toBe(100);
    expect(await workers[1]!.recordFailure('192.0.2.1', 'bob')).toBe(200);
    expect(await workers[2]!.isBlocked('192.0.2.1', 'carol')).toBe(false);
    await workers[2]!.recordFailure('192.0.2.1', 'carol');
    for (const w of workers) expect(await w.isBlocked('192.0.2.1', 'x')).toBe(true);
    expect(await workers[0]!.isBlocked('192.0.2.2', 'x')).toBe(false);
    // a success on one worker clears the user's counter for all
    await workers[0]!.recordFailure('198.51.100.1', 'dave');
    expect(await workers[1]!.delayFor('198.51.100.9', 'dave')).toBe(100);
    await workers[1]!.recordFailure('198.51.100.2', 'dave');
    expect(await workers[2]!.delayFor('198.51.100.9', 'dave')).toBe(200);
    await workers[1]!.recordSuccess('198.51.100.2', 'dave');
    expect(await workers[2]!.delayFor('198.51.100.9', 'dave')).toBe(100);
  });

  it('keep LOGIN-DELAY times for all workers, long names included', async () => {
    const primary = new PrimaryLimits();
    const a = new ClusterLoginDelayStore(new PrimaryClient(channelTo(primary)));
    const b = new ClusterLoginDelayStore(new PrimaryClient(channelTo(primary)));
    const long = 'u'.repeat(5000);
    await a.recordLogin('alice', Date.now(), 60_000);
    await a.recordLogin(long, Date.now(), 60_000);
    expect(await b.waitMs('alice', Date.now(), 60_000)).toBeGreaterThan(59_000);
    expect(await b.waitMs(long, Date.now(), 60_000)).toBeGreaterThan(59_000);
    expect(await b.waitMs('bob', Date.now(), 60_000)).toBe(0);
  });

  it('a primary that does not answer makes the call fail after the timeout, and nothing is left waiting', async () => {
    const client = new PrimaryClient(channelTo(new PrimaryLimits(), { silent: true }), 50);
    const t0 = Date.now();
    await expect(new ClusterThrottleStore(client).counts(['ip:192.0.2.1'], Date.now(), 1000)).rejects.toThrow(/did not answer within 50 ms/);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(45);
    expect(client.pending).toBe(0);
  });

  it('a worker without a channel fails at once', async () => {
    const ch = { ...channelTo(new PrimaryLimits()), connected: false };
    await expect(new ClusterThrottleStore(new PrimaryClient(ch)).reset(['ip:x'])).rejects.toThrow(/no channel/);
  });
});

describe('the primary checks what workers send', () => {
  const ok = { type: LIMITS_MESSAGE, id: 1 };
  it.each([
    ['no id', { type: LIMITS_MESSAGE, op: 'counts', keys: ['ip:a'], ms: 1 }, 'bad id'],
    ['a negative id', { ...ok, id: -1, op: 'counts', keys: ['ip:a'], ms: 1 }, 'bad id'],
    ['an unknown operation', { ...ok, op: 'drop', keys: ['ip:a'] }, 'unknown operation'],
    ['keys that are not strings', { ...ok, op: 'increment', keys: [1], ms: 1 }, 'bad keys'],
    ['too many keys', { ...ok, op: 'increment', keys: Array.from({ length: 17 }, (_, i) => `ip:${i}`), ms: 1 }, 'bad keys'],
    ['an overlong key', { ...ok, op: 'counts', keys: ['x'.repeat(1025)], ms: 1 }, 'bad keys'],
    ['an empty key list', { ...ok, op: 'reset', keys: [] }, 'bad keys'],
    ['no window', { ...ok, op: 'increment', keys: ['ip:a'] }, 'bad window'],
    ['an infinite window', { ...ok, op: 'counts', keys: ['ip:a'], ms: 1e400 }, 'bad window'],
    ['a window given as text', { ...ok, op: 'counts', keys: ['ip:a'], ms: '5' }, 'bad window'],
    ['an overlong user', { ...ok, op: 'wait', user: 'u'.repeat(2000), ms: 1 }, 'bad user'],
    ['a login without delay', { ...ok, op: 'login', user: 'alice' }, 'bad delay'],
  ])('refuses %s', async (_what, message, why) => {
    const seen: string[] = [];
    const primary = new PrimaryLimits({ onBadRequest: (w) => seen.push(w) });
    expect(parseLimitsRequest(message)).toMatchObject({ error: why });
    const reply = await primary.answer(message);
    if ((message as { id?: unknown }).id === 1) expect(reply).toEqual({ type: LIMITS_MESSAGE, id: 1, ok: false });
    else expect(reply).toBeUndefined();
    expect(seen).toEqual([why]);
    // and nothing was counted
    expect(primary.throttle.size).toBe(0);
  });

  it('ignores messages that are not about limits', async () => {
    const primary = new PrimaryLimits();
    for (const m of [null, 'ready', { type: 'ready' }, [], 42]) expect(await primary.answer(m)).toBeUndefined();
  });

  it('a worker takes only the reply to its own request, and a refusal fails the call', async () => {
    const ee = new EventEmitter();
    const sent: { id: number }[] = [];
    const client = new PrimaryClient({ connected: true, send: (m) => (sent.push(m as { id: number }), true), on: (e, l) => ee.on(e, l) }, 1000);
    const p = client.request('counts', { keys: ['ip:a'], ms: 1000 });
    const id = sent[0]!.id;
    ee.emit('message', { type: LIMITS_MESSAGE, id: id + 1, ok: true, value: [99] }); // someone else's
    ee.emit('message', { type: 'ready' });
    ee.emit('message', { type: LIMITS_MESSAGE, id, ok: true, value: [3] });
    expect(await p).toEqual([3]);
    const q = client.request('reset', { keys: ['ip:a'] });
    ee.emit('message', { type: LIMITS_MESSAGE, id: sent[1]!.id, ok: false });
    await expect(q).rejects.toThrow(/refused/);
    // an answer of the wrong shape is an error, not a count
    const store = new ClusterThrottleStore(client);
    const r = store.counts(['ip:a', 'user:b'], 0, 1000);
    ee.emit('message', { type: LIMITS_MESSAGE, id: sent[2]!.id, ok: true, value: [1] });
    await expect(r).rejects.toThrow(/bad answer/);
    expect(client.pending).toBe(0);
  });
});
