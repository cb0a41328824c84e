/**
 * The one way the hub and the agent open their PostgreSQL pools.
 *
 * A pool here never closes an idle connection (pg's default closes them
 * after 10 s). A new backend is expensive before it has done anything
 * useful: the fork, catalog caches, our plpgsql functions compiled again and
 * every named statement parsed and planned again. On the 2-core VM we
 * measure on, where each page fault costs ~11 µs, a connect took 12–17 ms
 * and its first catalog query 3–5 ms more. A pool that shrinks during a
 * lull pays that at the start of the next burst, which is where sync
 * latency is judged. The pool's `max` still bounds what it holds.
 */
import pg from "pg";

export function makePool(connectionString: string, max: number, options?: string): pg.Pool {
  return new pg.Pool({ connectionString, max, idleTimeoutMillis: 0, ...(options ? { options } : {}) });
}

/**
 * Opens `n` connections at once and returns them to the pool, so the first
 * moment that needs n at once (an apply overlapping a capture read and a
 * housekeeping VACUUM, say) does not wait for a backend to start.
 */
export async function warmPool(pool: pg.Pool, n: number): Promise<void> {
  // allSettled: the connections that did open go back to the pool even if
  // one failed (a server at max_connections, say); held, they would shrink it.
  const opened = await Promise.allSettled(Array.from({ length: n }, () => pool.connect()));
  for (const r of opened) if (r.status === "fulfilled") r.value.release();
  const failed = opened.find((r) => r.status === "rejected");
  if (failed) throw (failed as PromiseRejectedResult).reason;
}
