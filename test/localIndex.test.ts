import assert from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import pg from "pg";
import { createDb, watchQueries, type TestDb } from "./support/db.ts";
import { plansDuring } from "./support/plans.ts";
import { ITEMS_DDL } from "./support/cluster.ts";
import { introspect } from "../agent/capture/introspect.ts";
import { setAside } from "../agent/capture/reader.ts";
import { makeApplier, type Applier } from "../agent/apply/applier.ts";
import { makeLocalIndex } from "../agent/apply/localIndex.ts";
import { cleanSql } from "../agent/apply/clean.ts";
import { ChangeBatchSchema, TransactionSchema, ChangeSchema, Op, type ChangeBatch } from "../gen/branchsync/v1/sync_pb.ts";
import { captureItems } from "./support/capture.ts";

const row = (id: number, sku: string) => JSON.stringify({ id, sku, qty: 1, price: 2.5, note: null, updated_at: "2026-01-01T00:00:00+00:00" });

/** One incoming transaction (seq) updating `ids`; `own` reports this branch's transactions' sequence numbers. */
function batch(seq: bigint, ids: number[], sku: string, own: { originTxn: bigint; seq: bigint }[] = []): ChangeBatch {
  return create(ChangeBatchSchema, {
    cursorAfter: seq,
    ownSequenced: own,
    transactions: [create(TransactionSchema, {
      seq, originBranch: "other", originTxn: seq + 1000n, chunkIndex: 0, lastChunk: true,
      changes: ids.map((id) => create(ChangeSchema, { table: "public.items", op: Op.UPDATE, key: `[${id}]`, row: row(id, sku) })),
    })],
  });
}

describe("local versions kept across batches (a branch with a local backlog)", function () {
  this.timeout(60_000);
  let db: TestDb;
  let applier: Applier;
  /** Rows the applier's queries returned: what it read from the branch database. */
  let rowsRead = 0;

  before(async () => {
    db = await createDb("localidx", ITEMS_DDL);
    watchQueries(db.pool, { returned: (results) => { for (const r of results) rowsRead += r?.rows?.length ?? 0; } });
    await captureItems(db.pool);
    applier = makeApplier(db.pool, [await introspect(db.pool as unknown as pg.ClientBase, "public.items")]);
  });
  after(async () => { await db?.drop(); });

  const skus = async (ids: number[]) => (await db.pool.query("SELECT id, sku FROM items WHERE id = ANY($1) ORDER BY id", [ids])).rows.map((r) => `${r.id}:${r.sku}`);
  const localTxids = async () => (await db.pool.query("SELECT txid::text FROM _branchsync.txns ORDER BY last_id")).rows.map((r) => BigInt(r.txid));

  it("reads only what is new or asked about for each incoming batch, and still keeps locally changed rows", async () => {
    // The backlog: 300 local transactions of 5 rows, none sent yet.
    for (let i = 0; i < 300; i++) {
      await db.pool.query("INSERT INTO items SELECT g, 'local', 1, 1, NULL, now() FROM generate_series($1::int, $1::int + 4) g", [i * 5 + 1]);
    }
    rowsRead = 0;
    await applier.apply(batch(1n, [3, 9000], "in1"));
    const first = rowsRead;
    assert.ok(first >= 300, `the first batch reads the backlog once (${first} rows)`);
    assert.deepEqual(await skus([3, 9000]), ["3:local", "9000:in1"], "row 3 has an unsent local change: kept");
    for (let s = 2n; s <= 6n; s++) {
      rowsRead = 0;
      await applier.apply(batch(s, [Number(s) * 5, 10_000 + Number(s)], `in${s}`));
      assert.ok(rowsRead < 20, `batch ${s} read ${rowsRead} rows, not the backlog`);
    }
    assert.deepEqual(await skus([10, 30]), ["10:local", "30:local"]);
    // A local change made since is seen too.
    await db.pool.query("INSERT INTO items VALUES (5000, 'later', 1, 1, NULL, now())");
    await applier.apply(batch(7n, [5000], "in7"));
    assert.deepEqual(await skus([5000]), ["5000:later"]);
  });

  it("follows local transactions as the hub sequences them and as they go", async () => {
    const [t1, t2, t3] = await localTxids();
    // t1 (rows 1-5) sequenced at 5, before the incoming 8: the incoming wins on row 1.
    // t2 (rows 6-10) sequenced at 20, after it: row 6 stays local.
    await applier.apply(batch(8n, [1, 6], "in8", [{ originTxn: t1, seq: 5n }, { originTxn: t2, seq: 20n }]));
    assert.deepEqual(await skus([1, 6]), ["1:in8", "6:local"]);
    // The hub rejects the transaction with rows 11-15: set aside, its rows no longer held.
    await setAside(db.pool, t3.toString(), "rejected for the test");
    await applier.apply(batch(9n, [11], "in9"));
    assert.deepEqual(await skus([11]), ["11:in9"]);
  });

  it("notices a change queue emptied by hand, whose ids start again", async () => {
    // Numbers restart, below what the index has already seen.
    await db.pool.query("TRUNCATE _branchsync.changes, _branchsync.txns RESTART IDENTITY");
    await applier.apply(batch(10n, [20], "in10"));
    assert.deepEqual(await skus([20]), ["20:in10"], "nothing pending any more");
    await db.pool.query("UPDATE items SET sku = 'again' WHERE id IN (21, 22)");
    await applier.apply(batch(11n, [21], "in11"));
    assert.deepEqual(await skus([21]), ["21:again"], "the new local change is kept");
    await applier.apply(batch(12n, [22], "in12"));
    assert.deepEqual(await skus([22]), ["22:again"]);
  });
});

describe("local versions: the queue renumbered by hand, and a stricter isolation default", function () {
  this.timeout(60_000);
  let db: TestDb;
  let applier: Applier;

  async function fresh(isolation?: string) {
    db = await createDb("localidx2", ITEMS_DDL);
    if (isolation) {
      await db.pool.query(`ALTER DATABASE "${db.name}" SET default_transaction_isolation = '${isolation}'`);
      await db.pool.end();
      db.pool = new pg.Pool({ connectionString: db.url, max: 6 });
      db.pool.on("error", () => undefined);
    }
    await captureItems(db.pool);
    applier = makeApplier(db.pool, [await introspect(db.pool as unknown as pg.ClientBase, "public.items")]);
    await db.pool.query("BEGIN; SET LOCAL branchsync.applying = 'on'; INSERT INTO items SELECT g, 'base', 1, 1, NULL, now() FROM generate_series(1, 100) g; COMMIT");
  }
  afterEach(async () => { await db?.drop(); });
  const sku = async (id: number) => (await db.pool.query("SELECT sku FROM items WHERE id = $1", [id])).rows[0]?.sku;
  const localUpdate = (id: number) => db.pool.query("UPDATE items SET sku = 'local' WHERE id = $1", [id]);

  it("reads everything again after RESTART IDENTITY, however many units were written since", async () => {
    await fresh();
    for (let i = 1; i <= 10; i++) await localUpdate(i);
    await applier.apply(batch(1n, [9000], "in1")); // the index has seen ids up to 10
    await db.pool.query("TRUNCATE _branchsync.changes, _branchsync.txns RESTART IDENTITY");
    // More units than that before the next read: ids 1..20 again.
    for (let i = 50; i < 70; i++) await localUpdate(i);
    await applier.apply(batch(2n, [52, 69], "in2"));
    assert.deepEqual([await sku(52), await sku(69)], ["local", "local"]);
  });

  it("catches a sequence set back by hand by the next read of every transaction", async () => {
    await fresh();
    for (let i = 1; i <= 10; i++) await localUpdate(i);
    await applier.apply(batch(1n, [9000], "in1"));
    await db.pool.query("DELETE FROM _branchsync.changes; DELETE FROM _branchsync.txns; SELECT setval('_branchsync.changes_id_seq', 1, false)");
    for (let i = 50; i < 70; i++) await localUpdate(i);
    // Within 64 reads one looks at every pending transaction and finds units it never saw.
    for (let s = 2n; s < 70n; s++) await applier.apply(batch(s, [9000 + Number(s)], `in${s}`));
    await applier.apply(batch(70n, [52], "in70"));
    assert.equal(await sku(52), "local");
  });

  it("sees a writer that committed while it waited for the apply lock, under a repeatable-read default", async () => {
    await fresh("repeatable read");
    await localUpdate(5);
    await applier.apply(batch(1n, [9000], "in1"));
    const w1 = await db.pool.connect();
    const w0 = await db.pool.connect();
    try {
      // w1 writes first (the lower unit id) and commits last; w0 commits before the apply starts.
      await w1.query("BEGIN ISOLATION LEVEL READ COMMITTED; UPDATE items SET sku = 'w1' WHERE id = 1");
      await w0.query("BEGIN ISOLATION LEVEL READ COMMITTED; UPDATE items SET sku = 'w0' WHERE id = 2; COMMIT");
      const applying = applier.apply(batch(2n, [1, 2], "in2"));
      await new Promise((r) => setTimeout(r, 300)); // the apply waits for w1's shared lock
      await w1.query("COMMIT");
      await applying;
    } finally {
      w1.release();
      w0.release();
    }
    assert.deepEqual([await sku(1), await sku(2)], ["w1", "w0"], "both local changes are newer than the incoming rows");
    await applier.apply(batch(3n, [1], "in3"));
    assert.equal(await sku(1), "w1");
  });
});

/**
 * n pending local transactions (one row each) in a queue whose statistics
 * are those of the housekeeping VACUUM that found it empty: it keeps the
 * pages, so the planner takes them for empty pages until changes is analyzed
 * again. Transactions analyzed since, as autovacuum would.
 */
async function backlogOnEmptiedQueue(pool: pg.Pool, n: number) {
  await pool.query("INSERT INTO items SELECT g, 'sent', 1, 1, repeat('x', 200), now() FROM generate_series(100000, 119999) g");
  await pool.query("DELETE FROM items; DELETE FROM _branchsync.changes; DELETE FROM _branchsync.txns");
  await pool.query("VACUUM (ANALYZE) _branchsync.txns, _branchsync.changes");
  for (let i = 0; i < n; i++) await pool.query("INSERT INTO items VALUES ($1, 'offline', 1, 1, NULL, now())", [i + 1]);
  await pool.query("ANALYZE _branchsync.txns");
}

/** The plans of what `sql` runs on its own connection (auto_explain). */
async function plansOf(pool: pg.Pool, sql: string): Promise<{ plans: string[]; rows: number }> {
  const c = await pool.connect();
  let rows = 0;
  try {
    const plans = await plansDuring(c, async () => { rows = (await c.query(sql)).rows?.length ?? 0; });
    return { plans, rows };
  } finally {
    c.release(true);
  }
}

describe("a branch's long local backlog, whatever the queue's statistics", function () {
  this.timeout(60_000);
  let db: TestDb;
  before(async () => {
    db = await createDb("backlogplan", ITEMS_DDL);
    await captureItems(db.pool);
  });
  after(async () => { await db?.drop(); });

  it("reads each pending transaction's units by an index probe, also after VACUUM saw the queue empty", async () => {
    await backlogOnEmptiedQueue(db.pool, 300);
    const [unitsSql] = makeLocalIndex().statements([]);
    const { plans, rows } = await plansOf(db.pool, unitsSql);
    assert.equal(rows, 300);
    assert.equal(plans.length, 1, plans.join("\n---\n"));
    assert.match(plans[0], /Index Cond: \(\(?txid = t\.txid\)?/, plans[0]);
    assert.doesNotMatch(plans[0], /Materialize|Join Filter|Seq Scan on changes/, plans[0]);
  });

  it("deletes the passed transactions' units by index probes, also after VACUUM saw the queue empty", async () => {
    await backlogOnEmptiedQueue(db.pool, 300);
    // The hub sequenced the first 250 (the last 50 not yet: invariant 1, they must stay); the cursor has passed 200.
    await db.pool.query("UPDATE _branchsync.txns t SET seq = o.n FROM (SELECT txid, row_number() OVER (ORDER BY last_id) AS n FROM _branchsync.txns) o WHERE o.txid = t.txid AND o.n <= 250");
    await db.pool.query("ANALYZE _branchsync.txns");
    const { plans } = await plansOf(db.pool, `BEGIN; ${cleanSql("200")}; COMMIT`);
    const { rows } = await db.pool.query(`SELECT (SELECT count(*) FROM _branchsync.txns)::int AS t, (SELECT count(*) FROM _branchsync.changes)::int AS u,
      (SELECT min(seq) FROM _branchsync.txns)::int AS low, (SELECT count(*) FROM _branchsync.txns WHERE seq IS NULL)::int AS unsent`);
    assert.deepEqual(rows[0], { t: 100, u: 100, low: 201, unsent: 50 });
    const units = plans.filter((p) => /Delete on changes/.test(p));
    assert.equal(units.length, 1, plans.join("\n---\n"));
    assert.match(units[0], /Index Cond: \(txid = ANY/, units[0]);
    assert.doesNotMatch(units[0], /Join|Materialize|Seq Scan on changes/, units[0]);
  });
});
