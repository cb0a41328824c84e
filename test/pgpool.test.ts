/**
 * The pools of the hub and the agent keep their connections through a lull:
 * a new backend costs a connect, catalog caches and every named statement
 * planned again (lib/pgpool.ts), which a burst after a quiet spell would pay.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import pg from "pg";
import { makePool } from "../lib/pgpool.ts";
import { PG_BASE } from "./support/db.ts";

async function openedThenIdle(pool: pg.Pool, t: { mock: { timers: { enable(o: { apis: "setTimeout"[] }): void; tick(ms: number): void } } }) {
  // Two clients at once, so the pool holds two backends; released under
  // mocked timers, so pg-pool's idle timer (if it sets one) can be run out.
  const [a, b] = [await pool.connect(), await pool.connect()];
  const pids = [(await a.query("SELECT pg_backend_pid() AS p")).rows[0].p, (await b.query("SELECT pg_backend_pid() AS p")).rows[0].p];
  t.mock.timers.enable({ apis: ["setTimeout"] });
  a.release();
  b.release();
  t.mock.timers.tick(10 * 60_000);
  await new Promise((r) => setImmediate(r));
  return pids;
}

test("makePool keeps idle connections (pg's default pool drops them after 10 s)", async (t) => {
  const pool = makePool(`${PG_BASE}/postgres`, 4);
  try {
    const pids = await openedThenIdle(pool, t);
    t.mock.timers.reset();
    assert.equal(pool.totalCount, 2, "both backends still held after ten idle minutes");
    const again = await Promise.all([pool.connect(), pool.connect()]);
    const now = await Promise.all(again.map(async (c) => (await c.query("SELECT pg_backend_pid() AS p")).rows[0].p));
    again.forEach((c) => c.release());
    assert.deepEqual(now.sort(), pids.sort(), "the same backends serve the next burst");
  } finally {
    await pool.end();
  }
});

test("control: a pg.Pool with the default idle timeout lets them go (so the test above can fail)", async (t) => {
  const pool = new pg.Pool({ connectionString: `${PG_BASE}/postgres`, max: 4 });
  try {
    await openedThenIdle(pool, t);
    t.mock.timers.reset();
    assert.equal(pool.totalCount, 0);
  } finally {
    await pool.end();
  }
});
