/**
 * Wakes a tenant's sessions when its log head moves. Fed by this replica's
 * own commits and by the Redis bridge for other replicas' commits. It only
 * ever hints: a session that misses a wake-up still finds new entries on its
 * next timed poll of PostgreSQL, so a lost Redis message costs latency, never
 * data.
 */
export interface Feed {
  /** Tell waiters that the tenant's head is at least `seq`. */
  advance(tenantId: string, seq: bigint): void;
  /** Resolves when the head passes `after`, or after `timeoutMs`. */
  wait(tenantId: string, after: bigint, timeoutMs: number, abort?: AbortSignal): Promise<void>;
  known(tenantId: string): bigint;
}

export function makeFeed(): Feed {
  const heads = new Map<string, bigint>();
  const waiters = new Map<string, Set<{ after: bigint; wake: () => void }>>();
  return {
    advance(tenantId, seq) {
      if ((heads.get(tenantId) ?? 0n) < seq) heads.set(tenantId, seq);
      const set = waiters.get(tenantId);
      if (!set) return;
      for (const w of set) if (w.after < seq) w.wake();
    },
    known: (tenantId) => heads.get(tenantId) ?? 0n,
    wait(tenantId, after, timeoutMs, abort) {
      if ((heads.get(tenantId) ?? 0n) > after) return Promise.resolve();
      return new Promise((resolve) => {
        let set = waiters.get(tenantId);
        if (!set) { set = new Set(); waiters.set(tenantId, set); }
        const w = { after, wake: () => done() };
        const timer = setTimeout(() => done(), timeoutMs);
        const onAbort = () => done();
        abort?.addEventListener("abort", onAbort, { once: true });
        function done() {
          clearTimeout(timer);
          abort?.removeEventListener("abort", onAbort);
          set!.delete(w);
          if (set!.size === 0) waiters.delete(tenantId);
          resolve();
        }
        set.add(w);
      });
    },
  };
}
