/**
 * Wakes a tenant's sessions when its log head moves. Fed by this replica's
 * own commits, by the Redis bridge for other replicas' commits, and by one
 * timed poll of PostgreSQL per tenant that has waiting sessions (not one per
 * session: ten thousand idle streams must not mean ten thousand queries a
 * second). The poll is what makes a lost Redis message cost latency, never
 * data.
 */
export interface Feed {
  /** Tell waiters that the tenant's head is at least `seq`. */
  advance(tenantId: string, seq: bigint): void;
  /** Resolves when the known head passes `after`, on abort, or after `timeoutMs` if given. */
  wait(tenantId: string, after: bigint, abort?: AbortSignal, timeoutMs?: number): Promise<void>;
  known(tenantId: string): bigint;
  /**
   * Reads the heads of tenants with waiting sessions now, not at the next
   * tick: wake-ups published while this replica could not hear them (Redis
   * down or reconnecting) are lost, and only the poll finds what they said.
   */
  pollNow(): void;
  close(): void;
}

/** Reads the current head of a tenant's log. */
export type HeadReader = (tenantId: string) => Promise<bigint>;

export function makeFeed(readHead: HeadReader | null, pollMs: number, onError: (err: unknown) => void = () => undefined): Feed {
  const heads = new Map<string, bigint>();
  const waiters = new Map<string, Set<{ after: bigint; wake: () => void }>>();
  const advance = (tenantId: string, seq: bigint) => {
    if ((heads.get(tenantId) ?? 0n) < seq) heads.set(tenantId, seq);
    const set = waiters.get(tenantId);
    if (!set) return;
    for (const w of set) if (w.after < seq) w.wake();
  };
  let polling = false;
  /** A poll asked for while one ran: that one may have read a head before what it was asked for. */
  let again = false;
  const poll = async () => {
    if (!readHead) return;
    if (polling) { again = true; return; }
    polling = true;
    try {
      do {
        again = false;
        for (const tenantId of [...waiters.keys()]) advance(tenantId, await readHead(tenantId));
      } while (again);
    } catch (err) {
      onError(err);
    } finally {
      polling = false;
    }
  };
  const timer = readHead ? setInterval(poll, pollMs) : null;
  timer?.unref();
  return {
    advance,
    pollNow: () => { void poll(); },
    known: (tenantId) => heads.get(tenantId) ?? 0n,
    close() { if (timer) clearInterval(timer); },
    wait(tenantId, after, abort, timeoutMs) {
      if ((heads.get(tenantId) ?? 0n) > after || abort?.aborted) return Promise.resolve();
      return new Promise((resolve) => {
        let set = waiters.get(tenantId);
        if (!set) { set = new Set(); waiters.set(tenantId, set); }
        const w = { after, wake: () => done() };
        const onAbort = () => done();
        abort?.addEventListener("abort", onAbort, { once: true });
        // A plain timer: AbortSignal.timeout combined through AbortSignal.any
        // can be garbage-collected before it fires on Node 20, which left a
        // session waiting forever.
        let finished = false;
        const timer = timeoutMs === undefined ? null : setTimeout(done, timeoutMs);
        function done() {
          if (finished) return;
          finished = true;
          if (timer) clearTimeout(timer);
          abort?.removeEventListener("abort", onAbort);
          set!.delete(w);
          if (set!.size === 0 && waiters.get(tenantId) === set) waiters.delete(tenantId);
          resolve();
        }
        set.add(w);
      });
    },
  };
}
