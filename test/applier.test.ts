import assert from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import pg from "pg";
import { createDb, watchQueries, type TestDb } from "./support/db.ts";
import { ITEMS_DDL } from "./support/cluster.ts";
import { introspect } from "../agent/capture/introspect.ts";
import { makeApplier, ONE_TRIP_PAUSE_MS, type Applier } from "../agent/apply/applier.ts";
import { ChangeBatchSchema, TransactionSchema, ChangeSchema, Op, type ChangeBatch } from "../gen/branchsync/v1/sync_pb.ts";
import { captureItems } from "./support/capture.ts";
import { CURSOR_MOVED_SQLSTATE } from "../agent/capture/install.ts";

const row = (id: number, sku: string) => JSON.stringify({ id, sku, qty: 1, price: 2.5, note: null, updated_at: "2026-01-01T00:00:00+00:00" });

function batch(cursorAfter: bigint, txns: { seq: bigint; changes: [Op, number, string][] }[], own: { originTxn: bigint; seq: bigint }[] = []): ChangeBatch {
  return create(ChangeBatchSchema, {
    cursorAfter,
    ownSequenced: own,
    transactions: txns.map((t) => create(TransactionSchema, {
      seq: t.seq, originBranch: "other", originTxn: t.seq + 1000n, chunkIndex: 0, lastChunk: true,
      changes: t.changes.map(([op, id, sku]) => create(ChangeSchema, { table: "public.items", op, key: `[${id}]`, row: row(id, sku) })),
    })),
  });
}

describe("applier (branch database level)", function () {
  this.timeout(30_000);
  let db: TestDb;
  let applier: Applier;
  /** Queries sent by the applier's connections: its round trips. */
  let queries = 0;

  before(async () => {
    db = await createDb("applier", ITEMS_DDL);
    watchQueries(db.pool, { sent: () => { queries++; } });
    await captureItems(db.pool);
    const tables = [await introspect(db.pool as unknown as pg.ClientBase, "public.items")];
    applier = makeApplier(db.pool, tables);
    // The first apply on a connection prepares its statements.
    await applier.apply(batch(1n, [{ seq: 1n, changes: [[Op.INSERT, 100, "warm"]] }]));
  });
  after(async () => { await db?.drop(); });

  const skus = async () => (await db.pool.query("SELECT id, sku FROM items ORDER BY id")).rows.map((r) => `${r.id}:${r.sku}`);
  const cursor = async () => BigInt((await db.pool.query("SELECT cursor FROM _branchsync.state")).rows[0].cursor);

  it("applies a batch of whole transactions, inserts, updates and deletes, in one round trip", async () => {
    queries = 0;
    await applier.apply(batch(4n, [
      // Multibyte text early on: the later runs are found by byte offsets.
      { seq: 2n, changes: [[Op.INSERT, 1, "añ😀"], [Op.INSERT, 2, "b"], [Op.INSERT, 3, "c"]] },
      { seq: 3n, changes: [[Op.UPDATE, 2, "b2"], [Op.DELETE, 3, "c"]] },
      { seq: 4n, changes: [[Op.INSERT, 4, "d'$bs$"]] },
    ]));
    assert.equal(queries, 1, "one query for the whole batch");
    assert.deepEqual(await skus(), ["1:añ😀", "2:b2", "4:d'$bs$", "100:warm"]);
    assert.equal(await cursor(), 4n);
  });

  it("keeps a row whose local change the hub has not sequenced, applying the rest through the careful path", async () => {
    await db.pool.query("UPDATE items SET sku = 'local' WHERE id = 1");
    queries = 0;
    await applier.apply(batch(5n, [{ seq: 5n, changes: [[Op.UPDATE, 1, "incoming"], [Op.UPDATE, 2, "incoming"]] }]));
    assert.ok(queries > 1, `the one-trip attempt was sent back (${queries} queries)`);
    assert.deepEqual(await skus(), ["1:local", "2:incoming", "4:d'$bs$", "100:warm"]);
    assert.equal(await cursor(), 5n);
  });

  const localTxn = async () => BigInt((await db.pool.query("SELECT txid::text FROM _branchsync.txns")).rows[0].txid);

  it("overwrites a row whose local change was sequenced before the incoming one, in one round trip", async () => {
    // Sent back once, the path rests a while before it is tried again.
    await new Promise((r) => setTimeout(r, ONE_TRIP_PAUSE_MS + 50));
    const txid = await localTxn();
    queries = 0;
    await applier.apply(batch(7n, [{ seq: 7n, changes: [[Op.UPDATE, 1, "after"]] }], [{ originTxn: txid, seq: 6n }]));
    assert.equal(queries, 1);
    assert.deepEqual(await skus(), ["1:after", "2:incoming", "4:d'$bs$", "100:warm"]);
    assert.equal((await db.pool.query("SELECT count(*)::int AS n FROM _branchsync.txns")).rows[0].n, 0, "passed local transactions are gone");
  });

  it("keeps a row whose local change was sequenced after the incoming one", async () => {
    await db.pool.query("UPDATE items SET sku = 'later' WHERE id = 2");
    await applier.apply(batch(8n, [{ seq: 8n, changes: [[Op.UPDATE, 2, "earlier"], [Op.INSERT, 5, "e"]] }], [{ originTxn: await localTxn(), seq: 9n }]));
    assert.deepEqual(await skus(), ["1:after", "2:later", "4:d'$bs$", "5:e", "100:warm"]);
  });

  it("inserts rows inserted at their origin without upserting, and upserts them when one is here after all", async () => {
    // Its own applier, on a connection that reports every plan as a NOTICE.
    const explained = new pg.Pool({ connectionString: db.url, max: 1, options: "-c session_preload_libraries=auto_explain"
      + " -c auto_explain.log_min_duration=0 -c auto_explain.log_nested_statements=on -c auto_explain.log_level=notice" });
    const plans: string[] = [];
    let trips = 0;
    explained.on("connect", (client) => client.on("notice", (n) => plans.push(n.message ?? "")));
    watchQueries(explained, { sent: () => { trips++; } });
    const itemWrites = () => plans.splice(0).filter((p) => /Insert on items/.test(p))
      .map((p) => (/Conflict Resolution: UPDATE/.test(p) ? "upsert" : "insert"));
    try {
      const mine = makeApplier(explained, [await introspect(db.pool as unknown as pg.ClientBase, "public.items")]);
      await mine.apply(batch(10n, [{ seq: 10n, changes: [[Op.INSERT, 6, "f"], [Op.INSERT, 7, "g"]] }]));
      assert.deepEqual(itemWrites(), ["insert"], "rows new everywhere: a plain insert");
      // 1 is here already (a key inserted on two branches): the insert is
      // undone and the run upserted, still in the one round trip.
      trips = 0;
      await mine.apply(batch(11n, [{ seq: 11n, changes: [[Op.INSERT, 8, "h"], [Op.INSERT, 1, "again"]] }]));
      assert.equal(trips, 1, "one query for the batch");
      assert.deepEqual(itemWrites(), ["upsert"], "(auto_explain reports finished statements only, so not the failed insert)");
      await mine.apply(batch(12n, [{ seq: 12n, changes: [[Op.UPDATE, 8, "h2"]] }]));
      assert.deepEqual(itemWrites(), ["upsert"], "updates are upserted");
      assert.deepEqual(await skus(), ["1:again", "2:later", "4:d'$bs$", "5:e", "6:f", "7:g", "8:h2", "100:warm"]);
      assert.equal(await cursor(), 12n);
      assert.equal((await db.pool.query("SELECT count(*)::int AS n FROM _branchsync.quarantine WHERE seq >= 10")).rows[0].n, 0);
    } finally {
      await explained.end();
    }
  });
});

describe("applier commits: synchronous_commit of apply transactions", function () {
  this.timeout(30_000);
  let db: TestDb;
  let tables: Awaited<ReturnType<typeof introspect>>[];
  // A deferred trigger runs at COMMIT, so it sees the setting the commit uses.
  const SEEN_DDL = `${ITEMS_DDL};
    CREATE TABLE commit_setting (id bigserial PRIMARY KEY, value text);
    CREATE FUNCTION note_commit_setting() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN INSERT INTO commit_setting(value) VALUES (current_setting('synchronous_commit')); RETURN NULL; END $$;
    CREATE CONSTRAINT TRIGGER zz_commit_setting AFTER INSERT OR UPDATE ON items DEFERRABLE INITIALLY DEFERRED
      FOR EACH ROW EXECUTE FUNCTION note_commit_setting()`;
  const seen = async () => (await db.pool.query("DELETE FROM commit_setting RETURNING value")).rows.map((r) => r.value as string);

  before(async () => {
    db = await createDb("applysync", SEEN_DDL);
    await captureItems(db.pool);
    tables = [await introspect(db.pool as unknown as pg.ClientBase, "public.items")];
  });
  after(async () => { await db?.drop(); });

  it("applies without waiting for the WAL flush by default, on both paths, and leaves the session's setting alone", async () => {
    const applier = makeApplier(db.pool, tables);
    let queries = 0;
    watchQueries(db.pool, { sent: () => { queries++; } });
    // The first apply on a connection also writes its function.
    await applier.apply(batch(1n, [{ seq: 1n, changes: [[Op.INSERT, 1, "a"]] }]));
    queries = 0;
    await applier.apply(batch(2n, [{ seq: 2n, changes: [[Op.INSERT, 5, "e"], [Op.UPDATE, 1, "a2"]] }]));
    assert.equal(queries, 1, "the one-trip path");
    assert.deepEqual(await seen(), ["off", "off", "off"]);
    // A local change the hub has not sequenced sends the batch down the careful path.
    await db.pool.query("INSERT INTO items VALUES (2, 'local', 1, 1, NULL, now())");
    await seen();
    queries = 0;
    await applier.apply(batch(3n, [{ seq: 3n, changes: [[Op.INSERT, 3, "c"]] }]));
    assert.ok(queries > 1, `the careful path (${queries} queries)`);
    assert.deepEqual(await seen(), ["off"]);
    const settings = await Promise.all([0, 1, 2, 3].map(async () => {
      const c = await db.pool.connect();
      try { return (await c.query("SHOW synchronous_commit")).rows[0].synchronous_commit; } finally { c.release(); }
    }));
    assert.deepEqual(settings, ["on", "on", "on", "on"], "the pooled connections keep the database's default");
  });

  it("waits for the flush when the branch asks for it (APPLY_SYNCHRONOUS_COMMIT=on)", async () => {
    await new Promise((r) => setTimeout(r, ONE_TRIP_PAUSE_MS + 50));
    await db.pool.query("DELETE FROM _branchsync.changes; DELETE FROM _branchsync.txns");
    const durable = makeApplier(db.pool, tables, { synchronousCommit: "on" });
    await durable.apply(batch(4n, [{ seq: 4n, changes: [[Op.INSERT, 4, "d"]] }]));
    assert.deepEqual(await seen(), ["on"]);
    assert.throws(() => makeApplier(db.pool, tables, { synchronousCommit: "off; DROP TABLE items" }), /not one of PostgreSQL's values/);
  });

  it("learns the database's state again when a session ends: a crash may have undone the cursor move that dropped a local transaction", async () => {
    await seen();
    const applier = makeApplier(db.pool, tables);
    // Nothing of its own recorded: it stops looking for passed local transactions.
    await applier.apply(batch(5n, [{ seq: 5n, changes: [[Op.INSERT, 6, "f"]] }]));
    // As a crash leaves it: a local transaction recorded at seq 6, whose removal
    // (when the cursor passed 6) did not survive.
    await db.pool.query("INSERT INTO items VALUES (7, 'local', 1, 1, NULL, now())");
    await db.pool.query("UPDATE _branchsync.txns SET seq = 6");
    const left = async () => (await db.pool.query("SELECT count(*)::int AS n FROM _branchsync.txns")).rows[0].n as number;
    await applier.apply(batch(7n, [{ seq: 7n, changes: [[Op.INSERT, 8, "h"]] }]));
    assert.equal(await left(), 1, "what it knows from before the crash: none recorded, so none to drop");
    await applier.abort();
    await applier.apply(batch(8n, [{ seq: 8n, changes: [[Op.INSERT, 9, "i"]] }]));
    assert.equal(await left(), 0, "after a session's end it looks again and drops what the cursor passed");
  });

  it("reads its local index again when a session ends: a crash may bring back a local transaction it had forgotten", async () => {
    await seen();
    await db.pool.query("DELETE FROM _branchsync.changes; DELETE FROM _branchsync.txns; UPDATE _branchsync.state SET cursor = 20");
    const applier = makeApplier(db.pool, tables);
    const sku = async (id: number) => (await db.pool.query("SELECT sku FROM items WHERE id = $1", [id])).rows[0]?.sku as string | undefined;
    // U, a local change the hub has not sequenced, keeps every batch on the
    // careful path, the one that uses the index. T changes row 40; the hub
    // sequenced it at 23.
    await db.pool.query("INSERT INTO items VALUES (41, 'U', 1, 1, NULL, now())");
    const u = BigInt((await db.pool.query("SELECT txid::text FROM _branchsync.txns")).rows[0].txid);
    await db.pool.query("INSERT INTO items VALUES (40, 'T', 1, 1, NULL, now())");
    await db.pool.query("UPDATE _branchsync.txns SET seq = 23 WHERE txid <> $1", [u.toString()]);
    const t = BigInt((await db.pool.query("SELECT txid::text FROM _branchsync.txns WHERE seq = 23")).rows[0].txid);
    // The state a crash will go back to: T recorded, cursor at 21.
    await applier.apply(batch(21n, [{ seq: 21n, changes: [[Op.INSERT, 42, "x"]] }]));
    const TABLES = ["items", "_branchsync.txns", "_branchsync.changes", "_branchsync.state"];
    await db.pool.query(TABLES.map((n, i) => `CREATE TABLE snap${i} AS SELECT * FROM ${n}`).join(";"));
    const snapshot = await db.pool.connect();
    try {
      // Seq 22 changes row 40 elsewhere, before T: T's version stays. Then
      // the cursor passes T (dropping it), and seq 25 changes row 40 again,
      // which the index answers by forgetting T's units.
      await applier.apply(batch(22n, [{ seq: 22n, changes: [[Op.UPDATE, 40, "other22"]] }]));
      assert.equal(await sku(40), "T", "before the crash: T was sequenced after seq 22");
      await applier.apply(batch(24n, [{ seq: 24n, changes: [[Op.INSERT, 43, "y"]] }], [{ originTxn: t, seq: 23n }]));
      await applier.apply(batch(25n, [{ seq: 25n, changes: [[Op.UPDATE, 40, "other25"]] }]));
      assert.equal(await sku(40), "other25");
      // The crash undoes the applies after seq 21, whose commits did not wait
      // for their flush: T's units and its txns row come back with their ids.
      await snapshot.query(`BEGIN; SET LOCAL branchsync.applying = on; ${TABLES.map((n, i) => `DELETE FROM ${n}; INSERT INTO ${n} SELECT * FROM snap${i}`).join(";")}; COMMIT`);
    } finally {
      snapshot.release();
    }
    await applier.abort();
    // The hub sends seq 22 again: T still outranks it.
    await applier.apply(batch(22n, [{ seq: 22n, changes: [[Op.UPDATE, 40, "other22"]] }]));
    assert.equal(await sku(40), "T", "a local change sequenced after the incoming one is kept, also after a crash");
    await applier.apply(batch(25n, [{ seq: 24n, changes: [[Op.INSERT, 43, "y"]] }, { seq: 25n, changes: [[Op.UPDATE, 40, "other25"]] }], [{ originTxn: t, seq: 23n }]));
    assert.equal(await sku(40), "other25");
  });

  it("moves the cursor only from where the session left it: after a restart took applies back, the next apply fails and changes nothing, on both paths", async () => {
    await seen();
    await db.pool.query("DELETE FROM _branchsync.changes; DELETE FROM _branchsync.txns; UPDATE _branchsync.state SET cursor = 30");
    const applier = makeApplier(db.pool, tables);
    const ids = async () => (await db.pool.query("SELECT id FROM items WHERE id >= 60 ORDER BY id")).rows.map((r) => Number(r.id));
    const cursorNow = async () => BigInt((await db.pool.query("SELECT cursor FROM _branchsync.state")).rows[0].cursor);
    applier.resume(30n);
    await applier.apply(batch(31n, [{ seq: 31n, changes: [[Op.INSERT, 60, "a"]] }]));
    await applier.apply(batch(32n, [{ seq: 32n, changes: [[Op.INSERT, 61, "b"]] }]));
    assert.equal(applier.position(), 32n);
    // What a crash leaves when the apply of 32 had not been flushed: its row and cursor move gone.
    // (Marked as an apply, so capture does not record the delete as a local change.)
    await db.pool.query("BEGIN; SET LOCAL branchsync.applying = 'on'; DELETE FROM items WHERE id = 61; UPDATE _branchsync.state SET cursor = 31; COMMIT");
    // The one-trip path (a plain batch) ...
    await assert.rejects(applier.apply(batch(33n, [{ seq: 33n, changes: [[Op.INSERT, 62, "c"]] }])),
      (e: { code?: string; message: string }) => e.code === CURSOR_MOVED_SQLSTATE && /holds cursor 31, not 32/.test(e.message));
    // ... and the path of chunked transactions (its cursor moves at the last chunk).
    const chunk = (i: number, last: boolean) => {
      const b = batch(last ? 33n : 0n, [{ seq: 33n, changes: [[Op.INSERT, 70 + i, "chunk"]] }]);
      b.transactions[0].chunkIndex = i; b.transactions[0].lastChunk = last;
      return b;
    };
    await applier.apply(chunk(0, false));
    await assert.rejects(applier.apply(chunk(1, true)), (e: { code?: string }) => e.code === CURSOR_MOVED_SQLSTATE);
    assert.deepEqual(await ids(), [60], "neither batch left a row");
    assert.equal(await cursorNow(), 31n, "nor moved the cursor");
    // The next session resumes from what the database kept and gets 32 again.
    await applier.abort();
    applier.resume(await cursorNow());
    await applier.apply(batch(33n, [{ seq: 32n, changes: [[Op.INSERT, 61, "b"]] }, { seq: 33n, changes: [[Op.INSERT, 62, "c"]] }]));
    assert.deepEqual(await ids(), [60, 61, 62]);
    assert.equal(await cursorNow(), 33n);
  });
});
