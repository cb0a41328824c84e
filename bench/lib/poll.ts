/** Polling a database for a condition, the way the anchors' bench.wait_for does (every ~5 ms, fresh snapshot each time). */
import type pg from "pg";
import { nowMs, sleep } from "./stats.ts";

/** Resolves with the wall-clock ms at which `sql` (returning one boolean) was first true. */
export async function waitUntil(db: pg.Pool | pg.Client, sql: string, timeoutMs: number, everyMs = 5): Promise<number> {
  const deadline = nowMs() + timeoutMs;
  for (;;) {
    const r = await db.query({ text: sql, rowMode: "array" });
    const t = nowMs();
    if (r.rows[0]?.[0] === true) return t;
    if (t > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for: ${sql}`);
    await sleep(everyMs);
  }
}
