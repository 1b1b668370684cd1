/**
 * One received message into the maildrops of its recipients, each decided on
 * its own: the store shares one written copy where it can
 * (MailStore.deliverShared), else one delivery per recipient. Each outcome
 * is undefined (delivered and durable) or the error for that recipient.
 */
import type { DeliveryTarget, MailStore } from '../store/types.js';

export async function deliverToAll(store: MailStore, targets: readonly DeliveryTarget[], message: Buffer, signal?: AbortSignal): Promise<(Error | undefined)[]> {
  if (targets.length === 0) return [];
  if (targets.length > 1 && store.deliverShared !== undefined) {
    try {
      return await store.deliverShared(targets, message, signal);
    } catch (e) {
      return targets.map(() => e as Error);
    }
  }
  return Promise.all(
    targets.map((t) =>
      store.deliver(t.user, message, signal, { quota: t.quota }).then(
        () => undefined,
        (e: unknown) => (e instanceof Error ? e : new Error(String(e))),
      ),
    ),
  );
}
