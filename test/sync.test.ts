import assert from "node:assert/strict";
import { startCluster, ITEMS_DDL, AUDIT_DDL, type Cluster, type Branch } from "./support/cluster.ts";
import { waitFor, digest } from "./support/db.ts";
import { metrics } from "../hub/metrics.ts";

const logReads = async () => (await metrics.logReads.get()).values[0]?.value ?? 0;

const ORDERS_DDL = `
  CREATE TABLE orders (id bigint PRIMARY KEY, customer text NOT NULL, total numeric(12,2) NOT NULL);
  CREATE TABLE order_lines (order_id bigint NOT NULL, line int NOT NULL, sku text NOT NULL, qty int NOT NULL,
                            PRIMARY KEY (order_id, line));`;


describe("core sync path", function () {
  this.timeout(60_000);
  let c: Cluster;
  let a: Branch;
  let b: Branch;

  before(async () => {
    c = await startCluster();
    await c.addTenant("acme");
    a = await c.addBranch("acme", "store-a", ITEMS_DDL + ";" + ORDERS_DDL, ["items", "orders", "order_lines"]);
    b = await c.addBranch("acme", "store-b", ITEMS_DDL + ";" + ORDERS_DDL + ";" + AUDIT_DDL, ["items", "orders", "order_lines"]);
    await a.start();
    await b.start();
  });
  after(async () => { await c?.close(); });

  it("carries insert, update and delete both ways within 2 s", async () => {
    await a.db.pool.query("INSERT INTO items VALUES (1, 'apple', 5, 1.10, 'fresh', now())");
    await waitFor("insert A→B", async () => (await b.db.pool.query("SELECT 1 FROM items WHERE id = 1")).rowCount === 1, 2000);
    await a.db.pool.query("UPDATE items SET qty = 4, note = 'sold one' WHERE id = 1");
    await waitFor("update A→B", async () => (await b.db.pool.query("SELECT 1 FROM items WHERE id = 1 AND qty = 4 AND note = 'sold one'")).rowCount === 1, 2000);
    await b.db.pool.query("INSERT INTO items VALUES (2, 'pear', 7, 0.90, NULL, now())");
    await waitFor("insert B→A", async () => (await a.db.pool.query("SELECT 1 FROM items WHERE id = 2")).rowCount === 1, 2000);
    await b.db.pool.query("UPDATE items SET price = 0.95 WHERE id = 2");
    await waitFor("update B→A", async () => (await a.db.pool.query("SELECT 1 FROM items WHERE id = 2 AND price = 0.95")).rowCount === 1, 2000);
    await b.db.pool.query("DELETE FROM items WHERE id = 1");
    await waitFor("delete B→A", async () => (await a.db.pool.query("SELECT 1 FROM items WHERE id = 1")).rowCount === 0, 2000);
    await a.db.pool.query("DELETE FROM items WHERE id = 2");
    await waitFor("delete A→B", async () => (await b.db.pool.query("SELECT 1 FROM items WHERE id = 2")).rowCount === 0, 2000);
    assert.equal(await digest(a.db.pool, "items"), await digest(b.db.pool, "items"));
  });

  it("moves a primary key change as delete + insert", async () => {
    await a.db.pool.query("INSERT INTO items VALUES (50, 'kiwi', 1, 2.00, 'k', now())");
    await waitFor("kiwi on B", async () => (await b.db.pool.query("SELECT 1 FROM items WHERE id = 50")).rowCount === 1);
    await a.db.pool.query("UPDATE items SET id = 51 WHERE id = 50");
    await waitFor("re-keyed on B", async () => {
      const r = await b.db.pool.query("SELECT id FROM items WHERE id IN (50, 51)");
      return r.rowCount === 1 && r.rows[0].id === "51";
    });
  });

  it("applies a multi-row transaction atomically, even one larger than a batch", async () => {
    const lines = 1_234; // > batchMaxChanges (500): travels in chunks
    let sawPartial = false;
    let reads = 0;
    let done = false;
    const reader = (async () => {
      while (!done) {
        // One snapshot for both counts.
        const r = await b.db.pool.query(
          `SELECT (SELECT count(*) FROM orders WHERE id = 7)::int AS o, (SELECT count(*) FROM order_lines WHERE order_id = 7)::int AS l`);
        const { o, l } = r.rows[0];
        if (!((o === 0 && l === 0) || (o === 1 && l === lines))) sawPartial = true;
        reads++;
        if (o === 1 && l === lines) return;
      }
    })();
    await a.db.pool.query(`BEGIN;
      INSERT INTO orders VALUES (7, 'carol', 99.50);
      INSERT INTO order_lines SELECT 7, g, 'sku-' || g, 1 FROM generate_series(1, ${lines}) g;
      COMMIT;`);
    await Promise.race([reader, new Promise((_, rej) => setTimeout(() => rej(new Error("order never arrived whole")), 15_000))]);
    done = true;
    assert.equal(sawPartial, false, "a reader on B saw part of the transaction");
    assert.ok(reads > 1, "the reader should have polled while the transaction was in flight");
  });

  it("sends a large transaction of one-row statements whole, however its statements fall into chunks", async () => {
    // Each statement is a capture unit; a chunk reads at most 256 of them.
    // 512 units of one row (the order and 511 lines) against 500-change
    // batches: two full reads, the second the transaction's last.
    const statements = Array.from({ length: 511 }, (_, i) => `INSERT INTO order_lines VALUES (8, ${i + 1}, 'one-by-one', 1)`);
    await a.db.pool.query(`BEGIN; INSERT INTO orders VALUES (8, 'dave', 1); ${statements.join("; ")}; COMMIT`);
    await waitFor("the order and its 511 lines on B", async () =>
      (await b.db.pool.query("SELECT count(*)::int AS n FROM order_lines WHERE order_id = 8")).rows[0].n === 511, 15_000);
  });

  it("sends transactions whose rows outgrow a message, in whatever size of statement", async () => {
    // 20 KB rows: one statement's unit of 250 rows is 5 MB, past gRPC's 4 MB
    // message; and ten one-row transactions of them fit 500 changes but not 4 MB... together.
    const big = "x".repeat(20_000);
    await a.db.pool.query(`INSERT INTO items SELECT g, 'big', 1, 1, $1 || g, now() FROM generate_series(700001, 700300) g`, [big]);
    for (let i = 0; i < 300; i++) await a.db.pool.query(`INSERT INTO items VALUES (${700_301 + i}, 'big1', 1, 1, $1, now())`, [big]);
    await waitFor("600 rows of 20 KB on B", async () =>
      (await b.db.pool.query("SELECT count(*)::int AS n FROM items WHERE id > 700000 AND id <= 700600 AND length(note) >= 20000")).rows[0].n === 600, 30_000);
    assert.equal(await digest(a.db.pool, "items"), await digest(b.db.pool, "items"));
  });

  it("moves aside a transaction with a row larger than a message can carry, and keeps syncing the rest", async () => {
    await a.db.pool.query("INSERT INTO items VALUES (710001, 'huge', 1, 1, $1, now())", ["y".repeat(5_000_000)]);
    await a.db.pool.query("INSERT INTO items VALUES (710002, 'after the huge one', 1, 1, NULL, now())");
    await waitFor("the next transaction on B", async () => (await b.db.pool.query("SELECT 1 FROM items WHERE id = 710002")).rowCount === 1, 15_000);
    const aside = await a.db.pool.query("SELECT error, rows::text LIKE '%710001%' AS row_kept FROM _branchsync.rejected WHERE error LIKE '%more than one SyncStream message carries%'");
    assert.equal(aside.rowCount, 1, "set aside, with why");
    assert.ok(aside.rows[0].row_kept, "its row kept for an operator");
    assert.equal((await b.db.pool.query("SELECT 1 FROM items WHERE id = 710001")).rowCount, 0);
    // Gone from the change log, and the rest of the test's rows compare equal.
    await a.db.pool.query("DELETE FROM items WHERE id = 710001");
  });

  it("does not echo applied changes back to the hub", async () => {
    await a.db.pool.query("INSERT INTO items VALUES (100, 'echo', 1, 1, 'e', now())");
    await waitFor("row on B", async () => (await b.db.pool.query("SELECT 1 FROM items WHERE id = 100")).rowCount === 1);
    // Give an echo time to happen, then look for one in every place it could be.
    await new Promise((r) => setTimeout(r, 300));
    const local = await b.db.pool.query("SELECT count(*)::int AS n FROM _branchsync.changes WHERE keys::jsonb @> '[[100]]'");
    assert.equal(local.rows[0].n, 0, "B captured the change it applied");
    const fromB = await c.hubDb.pool.query("SELECT count(*)::int AS n FROM tenant_acme.log WHERE origin_branch = 'store-b' AND position('\"echo\"'::bytea IN body) > 0");
    assert.equal(fromB.rows[0].n, 0, "hub log holds B's echo of A's row");
  });

  /** Ends B's LISTEN connection (as a firewall or idle_session_timeout would) and waits until the agent has a new one. */
  async function dropListen(): Promise<void> {
    const listening = "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN%' AND pid <> pg_backend_pid()";
    const before = (await b.db.pool.query(listening)).rows.map((r) => r.pid as number);
    assert.equal(before.length, 1, "one LISTEN connection");
    await b.db.pool.query("SELECT pg_terminate_backend($1)", [before[0]]);
    await waitFor("a new LISTEN connection", async () => (await b.db.pool.query(listening)).rows.some((r) => r.pid !== before[0]), 10_000);
  }

  it("keeps its session when only its database connection dropped, and starts again when a restart took applies back", async () => {
    const sessions = () => b.agent!.status().sessions;
    const onB = async (id: number) => (await b.db.pool.query("SELECT 1 FROM items WHERE id = $1", [id])).rowCount === 1;
    const caughtUp = async () => (await b.db.pool.query("SELECT cursor::text FROM _branchsync.state")).rows[0].cursor
      === (await c.hubDb.pool.query("SELECT seq::text FROM tenant_acme.head")).rows[0].seq;
    await waitFor("B caught up", caughtUp);
    const first = sessions();
    await dropListen();
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(sessions(), first, "a dropped connection is not a restart: the session goes on");
    await a.db.pool.query("INSERT INTO items VALUES (9001, 'after the drop', 1, 1, NULL, now())");
    await waitFor("row 9001 on B", () => onB(9001));
    await waitFor("B caught up", caughtUp);
    // What a crash of B's server leaves when the apply of 9001 was not yet
    // flushed: its row, its audit and its cursor move gone. Nothing more comes
    // from the hub, so no apply would notice; the connection's return does.
    const cursor = BigInt((await b.db.pool.query("SELECT cursor FROM _branchsync.state")).rows[0].cursor);
    await b.db.pool.query(`BEGIN; SET LOCAL branchsync.applying = 'on'; DELETE FROM items WHERE id = 9001; DELETE FROM audit WHERE id = 9001;
      UPDATE _branchsync.state SET cursor = ${cursor - 1n}; COMMIT`);
    await dropListen();
    await waitFor("row 9001 on B again", () => onB(9001), 10_000);
    assert.equal(sessions(), first + 1, "one new session, from the cursor the database kept");
    const audit = await b.db.pool.query("SELECT op, count(*)::int AS n FROM audit WHERE id = 9001 GROUP BY op");
    assert.deepEqual(audit.rows, [{ op: "INSERT", n: 1 }], "applied once in what the database kept");
  });

  it("serves a branch the entries this replica has just committed without reading the log", async () => {
    const reads0 = await logReads();
    for (let i = 0; i < 10; i++) {
      await a.db.pool.query("INSERT INTO items VALUES ($1, 'fresh', 1, 1, NULL, now())", [20_000 + i]);
      await waitFor(`row ${i} on B`, async () => (await b.db.pool.query("SELECT 1 FROM items WHERE id = $1", [20_000 + i])).rowCount === 1);
    }
    const reads = await logReads() - reads0;
    assert.ok(reads < 5, `B's session read the log ${reads} times for 10 transactions just appended through this replica`);
  });

  it("stores and forwards: an offline branch gets everything once on return", async () => {
    await b.stop();
    await b.db.pool.query("TRUNCATE audit");
    // With B away, only A's session follows the log, and it passes over
    // A's own appends without reading them back (hub/stream/session.ts).
    const reads0 = await logReads();
    for (let t = 0; t < 10; t++) {
      await a.db.pool.query(`INSERT INTO items SELECT g, 'sf', g, g / 100.0, 'offline', now() FROM generate_series(${10_000 + t * 100}, ${10_000 + t * 100 + 99}) g`);
    }
    await waitFor("A's changes acked by the hub", async () => (await a.agent!.pendingLocal()) === 0);
    await new Promise((r) => setTimeout(r, 300));
    const readsWhileAlone = await logReads() - reads0;
    await b.start();
    assert.ok(readsWhileAlone < 5, `A's own session read the log ${readsWhileAlone} times for its own 10 transactions`);
    await waitFor("1,000 rows on B", async () => (await b.db.pool.query("SELECT count(*)::int AS n FROM items WHERE note = 'offline'")).rows[0].n === 1000, 15_000);
    await new Promise((r) => setTimeout(r, 300));
    const audit = await b.db.pool.query("SELECT count(*)::int AS n, count(DISTINCT id)::int AS d FROM audit WHERE id >= 10000 AND id < 11000");
    assert.deepEqual(audit.rows[0], { n: 1000, d: 1000 }, "each row applied exactly once");
    assert.equal(await digest(a.db.pool, "items"), await digest(b.db.pool, "items"));
  });

  it("gives the tenant a gap-free sequence and acks every branch's cursor", async () => {
    const { rows } = await c.hubDb.pool.query("SELECT min(seq)::int AS lo, max(seq)::int AS hi, count(DISTINCT seq)::int AS n FROM tenant_acme.log");
    assert.equal(rows[0].lo, 1);
    assert.equal(rows[0].n, rows[0].hi, "sequence has gaps");
    const head = (await c.hubDb.pool.query("SELECT seq::int FROM tenant_acme.head")).rows[0].seq;
    assert.equal(head, rows[0].hi);
    let lags = "";
    await waitFor("cursors at head", async () => {
      const r = await c.admin.listBranches({ tenantId: "acme" });
      lags = r.branches.map((x) => `${x.id} acked ${x.ackedSeq} lag ${x.lag}`).join(", ");
      return r.branches.every((x) => x.lag === 0n);
    }).catch((e) => { throw new Error(`${e.message} (${lags})`); });
    // Local transactions are forgotten once the cursor has passed them.
    const queued = async () => {
      let n = 0;
      for (const br of [a, b]) n += (await br.db.pool.query("SELECT count(*)::int AS n FROM _branchsync.txns")).rows[0].n;
      return n;
    };
    await waitFor("the branches' local change queues to empty", async () => (await queued()) === 0);
  });
});

describe("initial upload", function () {
  this.timeout(60_000);
  let c: Cluster;
  after(async () => { await c?.close(); });

  it("sends a branch's existing rows once, when asked, on first start only", async () => {
    c = await startCluster();
    await c.addTenant("seeded");
    const seed = `${ITEMS_DDL}; INSERT INTO items SELECT g, 'old', g, g, NULL, now() FROM generate_series(1, 1200) g`;
    const a = await c.addBranch("seeded", "hq", seed, ["items"], { initialUpload: true });
    const b = await c.addBranch("seeded", "new-shop", ITEMS_DDL, ["items"]);
    await a.start();
    await b.start();
    await waitFor("existing rows on the new branch", async () =>
      (await b.db.pool.query("SELECT count(*)::int AS n FROM items")).rows[0].n === 1200, 15_000);
    assert.equal(await digest(a.db.pool, "items"), await digest(b.db.pool, "items"));
    // A restart must not upload again.
    await a.stop();
    await a.start();
    await a.db.pool.query("INSERT INTO items VALUES (5000, 'new', 1, 1, NULL, now())");
    await waitFor("later row", async () => (await b.db.pool.query("SELECT 1 FROM items WHERE id = 5000")).rowCount === 1);
    const n = (await c.hubDb.pool.query("SELECT coalesce(sum(n_changes), 0)::int AS n FROM tenant_seeded.log")).rows[0].n;
    assert.equal(n, 1201);
  });

  it("leaves unchanged capture triggers alone on restart, and repairs missing ones", async () => {
    const b = await c.addBranch("seeded", "restarts", ITEMS_DDL, ["items"]);
    const triggers = async () => (await b.db.pool.query(
      "SELECT tgname, oid::int FROM pg_trigger WHERE tgrelid = 'items'::regclass AND tgname LIKE '\\_branchsync%' ORDER BY 1")).rows;
    await b.start();
    const first = await triggers();
    assert.equal(first.length, 5);
    await b.stop();
    await b.start();
    assert.deepEqual(await triggers(), first, "a restart recreated unchanged triggers");
    await b.stop();
    await b.db.pool.query("DROP TRIGGER _branchsync_ins ON items");
    await b.start();
    assert.equal((await triggers()).length, 5, "a dropped capture trigger was not reinstalled");
    await b.db.pool.query("INSERT INTO items VALUES (9000, 'repaired', 1, 1, NULL, now())");
    await waitFor("row from the repaired trigger", async () => (await c.hubDb.pool.query(
      "SELECT count(*)::int AS n FROM tenant_seeded.log WHERE origin_branch = 'restarts'")).rows[0].n === 1);
  });
});
