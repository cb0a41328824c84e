/**
 * The pools of the hub and the agent keep their connections through a lull
 * and open them before they are needed: a new backend costs a connect,
 * catalog caches and every named statement planned again (lib/pgpool.ts),
 * which a burst after a quiet spell would otherwise pay.
 */
import assert from "node:assert/strict";
import { mock } from "node:test";
import pg from "pg";
import { makePool, warmPool } from "../lib/pgpool.ts";
import { PG_BASE } from "./support/db.ts";

const pid = async (c: pg.PoolClient): Promise<number> => (await c.query("SELECT pg_backend_pid() AS p")).rows[0].p;

/** Holds two clients at once, releases them under mocked timers and runs any idle timer out; returns their backends' pids. */
async function openedThenIdle(pool: pg.Pool): Promise<number[]> {
  const [a, b] = [await pool.connect(), await pool.connect()];
  const pids = [await pid(a), await pid(b)];
  mock.timers.enable({ apis: ["setTimeout"] });
  a.release();
  b.release();
  mock.timers.tick(10 * 60_000);
  mock.timers.reset();
  await new Promise((r) => setImmediate(r));
  return pids;
}

describe("PostgreSQL pools of the hub and the agent", () => {
  afterEach(() => mock.timers.reset());

  it("keep idle connections (pg's default pool drops them after 10 s)", async () => {
    const pool = makePool(`${PG_BASE}/postgres`, 4);
    try {
      const pids = await openedThenIdle(pool);
      assert.equal(pool.totalCount, 2, "both backends still held after ten idle minutes");
      const again = await Promise.all([pool.connect(), pool.connect()]);
      const now = await Promise.all(again.map(pid));
      again.forEach((c) => c.release());
      assert.deepEqual(now.sort(), pids.sort(), "the same backends serve the next burst");
    } finally {
      await pool.end();
    }
  });

  it("control: a pg.Pool with the default idle timeout lets them go (so the test above can fail)", async () => {
    const pool = new pg.Pool({ connectionString: `${PG_BASE}/postgres`, max: 4 });
    try {
      await openedThenIdle(pool);
      assert.equal(pool.totalCount, 0);
    } finally {
      await pool.end();
    }
  });

  it("warmPool opens n backends up front, and they serve n concurrent clients", async () => {
    const pool = makePool(`${PG_BASE}/postgres`, 4);
    try {
      await warmPool(pool, 3);
      assert.equal(pool.totalCount, 3);
      assert.equal(pool.idleCount, 3);
      const held = await Promise.all([pool.connect(), pool.connect(), pool.connect()]);
      assert.equal(pool.totalCount, 3, "no fourth backend was started for three clients");
      held.forEach((c) => c.release());
    } finally {
      await pool.end();
    }
  });

  it("warmPool that cannot open them all fails, and gives back those it opened", async () => {
    // Connection limits bind roles that are not superusers.
    const role = `bst_warm_${process.pid}`;
    const admin = new pg.Client({ connectionString: `${PG_BASE}/postgres` });
    await admin.connect();
    await admin.query(`CREATE ROLE ${role} LOGIN CONNECTION LIMIT 2`);
    const url = new URL(`${PG_BASE}/postgres`);
    url.username = role;
    url.password = "";
    const pool = makePool(url.toString(), 4);
    pool.on("error", () => undefined); // its idle clients are terminated at the end
    try {
      await assert.rejects(warmPool(pool, 3), /too many connections/);
      assert.equal(pool.totalCount, 2, "the two that opened are pooled");
      assert.equal(pool.idleCount, 2, "and free, not held by the failed warm-up");
      const held = await Promise.all([pool.connect(), pool.connect()]);
      held.forEach((c) => c.release());
    } finally {
      // The role goes first: a failing warmPool may leave clients checked out, which pool.end() waits for.
      await admin.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", [role]);
      await admin.query(`DROP ROLE ${role}`);
      await admin.end();
      await pool.end();
    }
  });
});
