import assert from "node:assert/strict";
import pg from "pg";
import { ensureTenantCurrent, migrate } from "../hub/store/migrate.ts";
import { createTenant, tenantSchema } from "../hub/store/tenants.ts";
import { appendBatch, readAfter, saveCursor, type AppendResult } from "../hub/store/log.ts";

/** Conflicts an append decided (they come back counted per table and strategy). */
const decided = (r: AppendResult) => r.conflicts.reduce((n, c) => n + c.n, 0);
import { loadVersions } from "../hub/store/rowState.ts";
import { changesAt } from "../hub/store/images.ts";
import { decodeTxn, type WireChange } from "../lib/protowire.ts";
import { create, toBinary } from "@bufbuild/protobuf";
import { TransactionSchema, Op } from "../gen/branchsync/v1/sync_pb.ts";
import { createDb, watchQueries, type TestDb } from "./support/db.ts";
import { seeded, testSeed } from "./support/process.ts";
import { plansDuring } from "./support/plans.ts";

describe("the tenant log (store level)", function () {
  this.timeout(60_000);
  let db: TestDb;
  let pool: pg.Pool;
  const S = tenantSchema("t");

  before(async () => {
    db = await createDb("log");
    pool = new pg.Pool({ connectionString: db.url, max: 20 });
    pool.on("error", () => undefined); // DROP ... WITH (FORCE) ends idle clients
    await migrate(pool);
    await createTenant(pool, "t", "t");
  });
  after(async () => { await pool.end(); await db.drop(); });

  it("records acked cursors, monotonic, without waiting for the WAL flush (operators' lag only: a branch resumes from its own)", async () => {
    // A deferred trigger runs at COMMIT, so it sees the setting the commit uses.
    await pool.query(`CREATE TABLE cursor_commits (value text);
      CREATE FUNCTION note_cursor_commit() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN INSERT INTO cursor_commits VALUES (current_setting('synchronous_commit')); RETURN NULL; END $$;
      CREATE CONSTRAINT TRIGGER zz_cursor_commit AFTER INSERT OR UPDATE ON ${S}.cursors DEFERRABLE INITIALLY DEFERRED
        FOR EACH ROW EXECUTE FUNCTION note_cursor_commit()`);
    try {
      await saveCursor(pool, S, "b1", 5n);
      await saveCursor(pool, S, "b1", 3n);
      const acked = await pool.query(`SELECT acked_seq::int AS n FROM ${S}.cursors WHERE branch_id = 'b1'`);
      assert.equal(acked.rows[0].n, 5, "an older ack does not move it back");
      assert.deepEqual((await pool.query("SELECT value FROM cursor_commits")).rows.map((r) => r.value), ["off", "off"]);
      assert.equal((await pool.query("SHOW synchronous_commit")).rows[0].synchronous_commit, "on", "the connection keeps the database's default");
    } finally {
      await pool.query(`DROP TRIGGER zz_cursor_commit ON ${S}.cursors; DROP FUNCTION note_cursor_commit(); DROP TABLE cursor_commits`);
    }
  });

  it("gives concurrent appenders a gap-free sequence that becomes visible in order; resends are duplicates", async () => {
    const rnd = seeded(testSeed());
    const txn = (id: number, chunk = 0, last = true) => {
      const changes = [{ table: "public.t", op: Op.INSERT, key: `[${id}, ${chunk}]`, row: `{"id": ${id}}`, prev: "" }];
      const body = toBinary(TransactionSchema, create(TransactionSchema, { originTxn: BigInt(id), chunkIndex: chunk, lastChunk: last, changes }));
      return { originTxn: BigInt(id), chunkIndex: chunk, lastChunk: last, nChanges: 1, body, changes, baseSeq: 0n, hlc: 1n };
    };
    let done = false;
    const gaps: string[] = [];
    const watcher = (async () => {
      while (!done) {
        const r = await pool.query(`SELECT count(DISTINCT seq)::int AS n, coalesce(max(seq), 0)::int AS hi FROM ${S}.log`);
        if (r.rows[0].n !== r.rows[0].hi) gaps.push(`${r.rows[0].n} vs ${r.rows[0].hi}`);
      }
    })();
    const accepted = new Map<string, bigint>();
    await Promise.all(Array.from({ length: 8 }, async (_, w) => {
      for (let i = 0; i < 40; i++) {
        const size = 1 + Math.floor(rnd() * 4);
        const ids = Array.from({ length: size }, (_, k) => w * 10_000 + i * 10 + k);
        // Sometimes a batch resends the previous one's first transaction.
        if (i > 0 && rnd() < 0.3) ids.push(w * 10_000 + (i - 1) * 10);
        // Sometimes a transaction arrives in chunks: the general path.
        const chunked = rnd() < 0.2;
        if (chunked) await appendBatch(pool, S, `b${w}`, [txn(w * 10_000 + i * 10 + 9, 0, false)], new Map());
        const batch = ids.map((id) => txn(id));
        if (chunked) batch.push(txn(w * 10_000 + i * 10 + 9, 1, true));
        const { outcomes } = await appendBatch(pool, S, `b${w}`, batch, new Map());
        outcomes.forEach((o, k) => {
          const key = `b${w}/${batch[k].originTxn}`;
          if (o.kind === "accepted") {
            assert.ok(!accepted.has(key), `${key} accepted twice`);
            accepted.set(key, o.seq);
          } else if (o.kind === "duplicate") {
            assert.equal(o.seq, accepted.get(key), `${key} duplicate with another seq`);
          } else assert.fail(`unexpected ${o.kind}`);
        });
      }
    }));
    done = true;
    await watcher;
    assert.deepEqual(gaps, []);
    const seqs = [...accepted.values()].map(Number).sort((a, b) => a - b);
    assert.deepEqual(seqs, seqs.map((_, i) => i + 1), "sequence numbers 1..N, each once");
    const all = await readAfter(pool, S, 0n, 0, 100_000);
    const chunkedParts = all.filter((e) => e.part > 0).length;
    assert.ok(chunkedParts > 0, "some transactions went through the chunked path");
  });

  it("upgrades a tenant made by an older hub when the hub starts", async () => {
    await createTenant(pool, "old", "old");
    const O = tenantSchema("old");
    // What a tenant looked like before conflict tracking (schema version 0).
    await pool.query(`DROP FUNCTION ${O}.append_plain, ${O}.row_versions; DROP TABLE ${O}.row_state, ${O}.conflicts, ${O}.quarantine;
      ALTER TABLE ${O}.log DROP COLUMN conflicts;
      DROP INDEX ${O}.log_origin_txn_idx; CREATE UNIQUE INDEX ON ${O}.log (origin_branch, origin_txn, part);
      ALTER TABLE ${O}.head DROP COLUMN run_branch, DROP COLUMN run_start;
      ALTER TABLE ${O}.tables DROP COLUMN strategy, DROP COLUMN branch_priority, DROP COLUMN delta_columns;
      UPDATE branchsync.tenants SET schema_version = 0 WHERE id = 'old'`);
    await migrate(pool);
    const changes = [{ table: "public.t", op: Op.INSERT, key: "[1]", row: `{"id": 1}`, prev: "" }];
    const body = toBinary(TransactionSchema, create(TransactionSchema, { originTxn: 1n, lastChunk: true, changes }));
    const { outcomes } = await appendBatch(pool, O, "b", [{ originTxn: 1n, chunkIndex: 0, lastChunk: true, nChanges: 1, body, changes, baseSeq: 0n, hlc: 1n }], new Map());
    assert.deepEqual(outcomes, [{ kind: "accepted", seq: 1n }]);
    assert.equal((await pool.query("SELECT count(*)::int AS n FROM tenant_old.row_state")).rows[0].n, 1);
    const ff = await pool.query("SELECT reloptions FROM pg_class WHERE oid = 'tenant_old.row_state'::regclass");
    assert.deepEqual(ff.rows[0].reloptions, ["fillfactor=50"]);
    const idx = await pool.query("SELECT indexdef FROM pg_indexes WHERE schemaname = 'tenant_old' AND tablename = 'log' AND indexdef LIKE '%origin_txn%'");
    assert.deepEqual(idx.rows.map((r) => r.indexdef.replace(/.*USING btree /, "")), ["(origin_txn, origin_branch, part)"]);
    const lz4 = await pool.query(`SELECT attrelid::regclass::text AS t, attcompression AS c FROM pg_attribute
      WHERE attrelid IN ('tenant_old.log'::regclass, 'tenant_old.pending_chunks'::regclass) AND attname = 'body' ORDER BY 1`);
    assert.deepEqual(lz4.rows, [{ t: "tenant_old.log", c: "l" }, { t: "tenant_old.pending_chunks", c: "l" }]);
    const coll = await pool.query(`SELECT a.attname, c.collname FROM pg_attribute a JOIN pg_collation c ON c.oid = a.attcollation
      WHERE a.attrelid = 'tenant_old.row_state'::regclass AND a.attname IN ('tbl', 'key') ORDER BY 1`);
    assert.deepEqual(coll.rows, [{ attname: "key", collname: "C" }, { attname: "tbl", collname: "C" }]);
    assert.equal((await loadVersions(pool, O, [{ table: "public.t", key: "[1]" }])).get("public.t\u0000[1]")?.seq, 1n);
    const v = await pool.query("SELECT schema_version FROM branchsync.tenants WHERE id = 'old'");
    assert.equal(v.rows[0].schema_version, (await pool.query("SELECT max(schema_version) AS m FROM branchsync.tenants")).rows[0].m);
  });

  it("upgrades a tenant an older replica created after this hub started, before serving it", async () => {
    await createTenant(pool, "late", "late");
    const L = tenantSchema("late");
    // As a replica on schema version 8 would have left it (rolling upgrade).
    await pool.query(`DROP FUNCTION ${L}.row_versions; UPDATE branchsync.tenants SET schema_version = 8 WHERE id = 'late'`);
    await assert.rejects(loadVersions(pool, L, [{ table: "public.t", key: "[1]" }]), /row_versions/);
    await ensureTenantCurrent(pool, "late");
    assert.equal((await loadVersions(pool, L, [{ table: "public.t", key: "[1]" }])).size, 0);
    const v = await pool.query("SELECT schema_version FROM branchsync.tenants WHERE id = 'late'");
    assert.equal(v.rows[0].schema_version, (await pool.query("SELECT max(schema_version) AS m FROM branchsync.tenants")).rows[0].m);
  });

  it("finds resends by probing their txids, also before the log has statistics", async () => {
    // Every append looks its txids up. Planned without statistics (a new
    // tenant, before autoanalyze), the lookup used to walk all of the
    // branch's entries: milliseconds per append, growing with the log.
    await createTenant(pool, "plan", "plan");
    const P = tenantSchema("plan");
    await pool.query(`ALTER TABLE ${P}.log SET (autovacuum_enabled = off)`);
    const changes = [{ table: "public.t", op: Op.INSERT, key: "[1]", row: `{"id": 1}`, prev: "" }];
    const body = toBinary(TransactionSchema, create(TransactionSchema, { lastChunk: true, changes }));
    for (let i = 0; i < 20; i++) {
      const batch = Array.from({ length: 200 }, (_, k) => ({ originTxn: BigInt(i * 200 + k + 1), chunkIndex: 0, lastChunk: true, nChanges: 1, body, changes, baseSeq: BigInt(i * 200 + k), hlc: 1n }));
      await appendBatch(pool, P, "a", batch, new Map());
    }
    const c = await pool.connect();
    try {
      await c.query("SET plan_cache_mode = force_generic_plan");
      await c.query(`PREPARE dedup(text, bigint[]) AS SELECT 1 FROM ${P}.log WHERE origin_branch = $1 AND origin_txn = ANY($2) AND part = 0`);
      const plan = await c.query("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE dedup('a', '{7,3999}')");
      const root = plan.rows[0]["QUERY PLAN"][0].Plan;
      assert.match(String(root["Index Cond"]), /origin_txn = ANY/, JSON.stringify(root));
      assert.equal(root["Actual Rows"], 2);
      assert.ok(root["Shared Hit Blocks"] + (root["Shared Read Blocks"] ?? 0) < 20, `the lookup read ${root["Shared Hit Blocks"]} blocks`);
    } finally {
      await c.query("DEALLOCATE dedup").catch(() => undefined);
      c.release();
    }
  });

  it("skips the row-version check within one branch's run of plain appends, and only there", async () => {
    await createTenant(pool, "run", "run");
    const R = tenantSchema("run");
    const txn = (id: number, keys: number[], baseSeq: bigint) => {
      const changes = keys.map((key) => ({ table: "public.t", op: Op.UPDATE, key: `[${key}]`, row: `{"id": ${key}}`, prev: "" }));
      const body = toBinary(TransactionSchema, create(TransactionSchema, { originTxn: BigInt(id), lastChunk: true, changes }));
      return { originTxn: BigInt(id), chunkIndex: 0, lastChunk: true, nChanges: changes.length, body, changes, baseSeq, hlc: BigInt(id) };
    };
    assert.deepEqual((await appendBatch(pool, R, "a", [txn(1, [1], 0n)], new Map())).outcomes, [{ kind: "accepted", seq: 1n }]);
    // A version no run of a's can hold (branch y inside it): only a check
    // would see it, so a's next transaction passing shows the check was skipped.
    await pool.query(`INSERT INTO ${R}.row_state(tbl, key, op, seq, branch, exact, hlc) VALUES ('public.t', '[2]', 'U', 1, 'y', true, 1)`);
    const inRun = await appendBatch(pool, R, "a", [txn(2, [2], 0n)], new Map());
    assert.deepEqual({ outcomes: inRun.outcomes, conflicts: decided(inRun) }, { outcomes: [{ kind: "accepted", seq: 2n }], conflicts: 0 });
    // b appends (seq 3): a's run is over, and a's transaction based before b's write is checked (and concurrent).
    await appendBatch(pool, R, "b", [txn(1, [3, 4], 2n)], new Map());
    const afterRun = await appendBatch(pool, R, "a", [txn(3, [3], 2n)], new Map());
    assert.equal(decided(afterRun), 1, "a's change met b's concurrent version");
    // A plain append starts a new run of a's at 5; a transaction based at 2
    // began before b's write, so it is still checked and meets b's [4].
    const runStart = await appendBatch(pool, R, "a", [txn(4, [9], 4n)], new Map());
    assert.deepEqual({ outcomes: runStart.outcomes, conflicts: decided(runStart) }, { outcomes: [{ kind: "accepted", seq: 5n }], conflicts: 0 });
    const oldBase = await appendBatch(pool, R, "a", [txn(5, [4], 2n)], new Map());
    assert.equal(decided(oldBase), 1, "a transaction based before its run must still be checked");
  });

  it("probes row versions by key in a connection that first appended when row_state was small", async () => {
    // Plans a hub connection made for append_plain stay; made on a small
    // row_state (autovacuum off or behind) the version check scanned all of
    // it for every append.
    await createTenant(pool, "probe", "probe");
    const P = tenantSchema("probe");
    await pool.query(`ALTER TABLE ${P}.row_state SET (autovacuum_enabled = off)`);
    const c = await pool.connect();
    let all: string[];
    try {
      // Branches take turns, so every append checks row versions.
      const append = (i: number) => c.query(
        `SELECT ${P}.append_plain($1, $2, '{1}', '\\x00', '{1}', '{0}', '{1}', '{public.t}', $3, '{U}', '{1}')`,
        [i % 2 ? "a" : "b", [String(i)], [`[${i}]`]]);
      for (let i = 1; i <= 8; i++) await append(i);
      await pool.query(`INSERT INTO ${P}.row_state(tbl, key, op, seq, branch, exact, hlc)
        SELECT 'public.t', '[' || g || ']', 'U', 1, 'x', true, 1 FROM generate_series(100, 20100) g`);
      all = await plansDuring(c, () => append(9));
    } finally {
      c.release(true);
    }
    const plans = all.filter((p) => p.includes("row_state r"));
    assert.equal(plans.length, 1, "the version check's plan");
    assert.match(plans[0], /Index (Only )?Scan using row_state_pkey on row_state r/);
    assert.doesNotMatch(plans[0], /Seq Scan on row_state/);
    // What a disabled plan costs must not make each call JIT-compile (50 ms).
    assert.ok(all.length >= 5, `plans of append_plain's statements: ${all.length}`);
    for (const plan of all) assert.doesNotMatch(plan, /JIT:/);
  });

  it("records rows inserted at their origin without upserting, and upserts when a key is there after all", async () => {
    await createTenant(pool, "fresh", "fresh");
    const F = tenantSchema("fresh");
    let id = 0;
    const txn = (changes: { op: Op; key: number }[], baseSeq: bigint) => {
      const chs = changes.map(({ op, key }) => ({ table: "public.t", op, key: `[${key}]`, row: `{"id": ${key}}`, prev: "" }));
      const originTxn = BigInt(++id);
      const body = toBinary(TransactionSchema, create(TransactionSchema, { originTxn, lastChunk: true, changes: chs }));
      return { originTxn, chunkIndex: 0, lastChunk: true, nChanges: chs.length, body, changes: chs, baseSeq, hlc: originTxn };
    };
    const state = async () => (await pool.query(`SELECT key, op, seq::int, branch FROM ${F}.row_state ORDER BY key`)).rows
      .map((r) => `${r.key} ${r.op} ${r.seq} ${r.branch}`);
    const rowStateWrites = (plans: string[]) => plans.filter((p) => /Insert on row_state/.test(p))
      .map((p) => (/Conflict Resolution: UPDATE/.test(p) ? "upsert" : "insert"));
    const c = await pool.connect();
    // appendBatch's plain path runs one query: on this connection, for auto_explain.
    const onC = { query: (q: pg.QueryConfig) => c.query(q) } as unknown as pg.Pool;
    try {
      // New keys, one inserted and updated in the same append: the insert
      // goes plain, the updated one (newest change U) is upserted.
      let plans = await plansDuring(c, () => appendBatch(onC, F, "a", [txn([{ op: Op.INSERT, key: 1 }, { op: Op.INSERT, key: 2 }], 0n),
        txn([{ op: Op.UPDATE, key: 2 }, { op: Op.INSERT, key: 3 }], 0n)], new Map()));
      assert.deepEqual(rowStateWrites(plans), ["insert", "upsert"]);
      assert.deepEqual(await state(), ["[1] I 1 a", "[2] U 2 a", "[3] I 2 a"]);
      // A delete leaves a tombstone; inserting the key again meets it, and the
      // whole plain insert is undone and upserted instead, new key included.
      await appendBatch(onC, F, "a", [txn([{ op: Op.DELETE, key: 1 }], 2n)], new Map());
      plans = await plansDuring(c, () => appendBatch(onC, F, "a", [txn([{ op: Op.INSERT, key: 4 }, { op: Op.INSERT, key: 1 }], 3n)], new Map()));
      // (auto_explain reports finished statements only, so not the failed insert.)
      assert.deepEqual(rowStateWrites(plans), ["upsert"]);
      assert.deepEqual(await state(), ["[1] I 4 a", "[2] U 2 a", "[3] I 2 a", "[4] I 4 a"]);
      // Another branch inserts a key a has (based after it, so no conflict): upserted.
      const { outcomes } = await appendBatch(onC, F, "b", [txn([{ op: Op.INSERT, key: 3 }, { op: Op.INSERT, key: 5 }], 4n)], new Map());
      assert.deepEqual(outcomes, [{ kind: "accepted", seq: 5n }]);
      assert.deepEqual(await state(), ["[1] I 4 a", "[2] U 2 a", "[3] I 5 b", "[4] I 4 a", "[5] I 5 b"]);
      assert.equal((await pool.query(`SELECT count(*)::int AS n FROM ${F}.log`)).rows[0].n, 5, "every append logged once");
    } finally {
      c.release(true);
    }
  });

  it("updates the versions of rows written together in place: an append updating every row of their pages adds no index entry", async () => {
    await createTenant(pool, "hot", "hot");
    const H = tenantSchema("hot");
    const n = 3000;
    const txn = (originTxn: bigint, op: Op, baseSeq: bigint) => {
      const changes = Array.from({ length: n }, (_, i) => ({ table: "public.items", op, key: `[${1_000_000_001 + i}]`, row: `{"id": ${1_000_000_001 + i}}`, prev: "" }));
      const body = toBinary(TransactionSchema, create(TransactionSchema, { originTxn, lastChunk: true, changes }));
      return { originTxn, chunkIndex: 0, lastChunk: true, nChanges: n, body, changes, baseSeq, hlc: originTxn };
    };
    const size = async () => (await pool.query(`SELECT pg_relation_size('${H}.row_state_pkey')::int AS idx,
      (SELECT count(*)::int FROM ${H}.row_state WHERE op = 'U') AS updated`)).rows[0];
    await appendBatch(pool, H, "a", [txn(1n, Op.INSERT, 0n)], new Map());
    const before = await size();
    // Another branch's updates: the upsert path, with the row-version check.
    const { outcomes } = await appendBatch(pool, H, "b", [txn(2n, Op.UPDATE, 1n)], new Map());
    assert.deepEqual(outcomes, [{ kind: "accepted", seq: 2n }]);
    const after = await size();
    assert.equal(after.updated, n, "every version updated");
    // A version moved to another page would have added its key to the index
    // again (at fillfactor 85: 16 -> 31 pages here).
    assert.equal(after.idx, before.idx, `key index grew from ${before.idx} to ${after.idx} bytes`);
  });

  it("looks row versions up by key in a connection that first did so when row_state was small", async () => {
    await createTenant(pool, "probe2", "probe2");
    const P = tenantSchema("probe2");
    await pool.query(`ALTER TABLE ${P}.row_state SET (autovacuum_enabled = off)`);
    const c = await pool.connect();
    let plans: string[];
    try {
      const ids = [{ table: "public.t", key: "[5]" }, { table: "public.t", key: "[7]" }];
      for (let i = 0; i < 8; i++) await loadVersions(c, P, ids);
      await pool.query(`INSERT INTO ${P}.row_state(tbl, key, op, seq, branch, exact, hlc)
        SELECT 'public.t', '[' || g || ']', 'U', g, 'x', true, 1 FROM generate_series(1, 20000) g`);
      plans = await plansDuring(c, async () => {
        const found = await loadVersions(c, P, ids);
        assert.deepEqual([...found.values()].map((v) => v.seq), [5n, 7n]);
      });
    } finally {
      c.release(true);
    }
    const lookup = plans.filter((p) => p.includes("row_state s"));
    assert.equal(lookup.length, 1, plans.join("\n---\n"));
    assert.match(lookup[0], /Index (Only )?Scan using row_state_pkey on row_state s/);
    for (const plan of plans) assert.doesNotMatch(plan, /Seq Scan on row_state|JIT:/);
  });

  it("after a kept row, only the loser's changes based before the decision are concurrent, on both append paths", async () => {
    await createTenant(pool, "kept", "kept");
    const K = tenantSchema("kept");
    const merge = new Map([["public.s", { strategy: "column-merge" as const, branchPriority: [], deltaColumns: ["qty"] }]]);
    let txid = 0;
    const txn = (table: string, op: Op, key: number, row: string, prev: string, baseSeq: bigint, hlc: bigint) => {
      const changes = [{ table, op, key: `[${key}]`, row, prev }];
      const originTxn = BigInt(++txid);
      const body = toBinary(TransactionSchema, create(TransactionSchema, { originTxn, lastChunk: true, changes }));
      return [{ originTxn, chunkIndex: 0, lastChunk: true, nChanges: 1, body, changes, baseSeq, hlc }];
    };
    const row = async (seq: bigint) => (await readAfter(pool, K, seq - 1n, 2_147_483_647, 1))[0];
    // Column-merge with a counter (the general path). x inserts (seq 1) and sells 2 while changing the price (seq 2).
    await appendBatch(pool, K, "x", txn("public.s", Op.INSERT, 1, '{"id": 1, "qty": 10, "p": "a"}', "", 0n, 10n), merge);
    await appendBatch(pool, K, "x", txn("public.s", Op.UPDATE, 1, '{"id": 1, "qty": 8, "p": "a2"}', '{"qty": [10], "p": ["a"]}', 1n, 20n), merge);
    // y (had seq 1) changes the price with an earlier clock: it loses, the row stays (seq 3 records the decision).
    const lost = await appendBatch(pool, K, "y", txn("public.s", Op.UPDATE, 1, '{"id": 1, "qty": 10, "p": "b"}', '{"p": ["a"]}', 1n, 15n), merge);
    assert.equal(decided(lost), 1);
    const ledger = await pool.query(`SELECT winner_branch, loser_branch FROM ${K}.conflicts WHERE seq = $1`, [String((lost.outcomes[0] as { seq: bigint }).seq)]);
    assert.deepEqual(ledger.rows.map((r) => [r.winner_branch, r.loser_branch]), [["x", "y"]]);
    // y skipped seq 2 while its change was pending, so its row is still qty 10. It sells 1, with its cursor at 2:
    // that change must add its delta to the kept row (10 + (9 - 10) = 7 on top of 8 is 7), not overwrite it with 9.
    const sale = await appendBatch(pool, K, "y", txn("public.s", Op.UPDATE, 1, '{"id": 1, "qty": 9, "p": "b"}', '{"qty": [10]}', 2n, 30n), merge);
    assert.equal(decided(sale), 1, "the loser's change is concurrent with the row it has not seen");
    const merged = await row((sale.outcomes[0] as { seq: bigint }).seq);
    const decoded = (await import("../lib/protowire.ts")).decodeTxn(merged.body, 0, merged.body.length);
    assert.equal(JSON.parse(decoded.changes[0].row).qty, 7, `no sale lost: ${decoded.changes[0].row}`);
    // Last-writer-wins table (append_plain's path): x writes (seq 5, 6); y based at 5 loses (seq 7).
    await appendBatch(pool, K, "x", txn("public.t", Op.INSERT, 1, '{"id": 1, "v": "x1"}', "", 0n, 40n), new Map());
    await appendBatch(pool, K, "x", txn("public.t", Op.UPDATE, 1, '{"id": 1, "v": "x2"}', "", 5n, 60n), new Map());
    const tLost = await appendBatch(pool, K, "y", txn("public.t", Op.UPDATE, 1, '{"id": 1, "v": "y1"}', "", 5n, 50n), new Map());
    assert.equal(decided(tLost), 1);
    // z had applied seq 6 and edits: sequential, no conflict, whatever y lost (invariant 5).
    const z = await appendBatch(pool, K, "z", txn("public.t", Op.UPDATE, 1, '{"id": 1, "v": "z1"}', "", 6n, 70n), new Map());
    assert.deepEqual({ conflicts: decided(z), plain: z.plain }, { conflicts: 0, plain: true }, "a third branch's sequential edit");
    // x wins again (seq 9); y loses again (seq 10); y's next change based at 9 comes before it applied seq 10.
    await appendBatch(pool, K, "x", txn("public.t", Op.UPDATE, 1, '{"id": 1, "v": "x3"}', "", 8n, 90n), new Map());
    await appendBatch(pool, K, "y", txn("public.t", Op.UPDATE, 1, '{"id": 1, "v": "y2"}', "", 8n, 80n), new Map());
    const again = await appendBatch(pool, K, "y", txn("public.t", Op.UPDATE, 1, '{"id": 1, "v": "y3"}', "", 9n, 100n), new Map());
    assert.equal(decided(again), 1, "append_plain sees the loser's change as concurrent too");
  });

  it("logs a transaction of many chunks in steps, and reads an image out of it a page at a time", async () => {
    await createTenant(pool, "many", "many");
    const M = tenantSchema("many");
    const PARTS = 60;
    const ROWS = 200; // 200 rows of ~1 kB per part: 12,000 changes, 12 MB, more than two steps
    const note = "n".repeat(1000);
    const part = (i: number) => {
      // Row 0 is written by every part: the log must keep the last part's version.
      const changes = Array.from({ length: ROWS }, (_, r) => {
        const id = r === 0 ? 0 : i * ROWS + r;
        const op = r === 0 && i > 0 ? Op.UPDATE : Op.INSERT;
        return { table: "public.t", op, key: `[${id}]`, row: `{"id": ${id}, "part": ${i}, "note": "${note}"}`, prev: "" };
      });
      const last = i === PARTS - 1;
      const body = toBinary(TransactionSchema, create(TransactionSchema, { originTxn: 77n, chunkIndex: i, lastChunk: last, changes }));
      return { originTxn: 77n, chunkIndex: i, lastChunk: last, nChanges: ROWS, body, changes, baseSeq: 0n, hlc: 5n };
    };
    for (let i = 0; i < PARTS - 1; i++) assert.deepEqual((await appendBatch(pool, M, "hq", [part(i)], new Map())).outcomes, [{ kind: "staged" }]);
    const done = await appendBatch(pool, M, "hq", [part(PARTS - 1)], new Map());
    assert.deepEqual(done.outcomes, [{ kind: "accepted", seq: 1n }]);
    const log = await pool.query(`SELECT part, last_part, n_changes FROM ${M}.log WHERE seq = 1 ORDER BY part`);
    assert.deepEqual(log.rows.map((r) => r.part), Array.from({ length: PARTS }, (_, i) => i), "every part, in order, under one seq");
    assert.deepEqual(log.rows.filter((r) => r.last_part).map((r) => r.part), [PARTS - 1], "only the last part is marked last");
    assert.equal((await pool.query(`SELECT seq::int FROM ${M}.head`)).rows[0].seq, 1);
    assert.equal((await pool.query(`SELECT count(*)::int AS n FROM ${M}.pending_chunks`)).rows[0].n, 0);
    assert.equal((await pool.query(`SELECT count(*)::int AS n FROM ${M}.row_state`)).rows[0].n, PARTS * (ROWS - 1) + 1);
    const v0 = (await loadVersions(pool, M, [{ table: "public.t", key: "[0]" }])).get("public.t\u0000[0]");
    assert.equal(v0?.seq, 1n);
    // A resend after it was logged is a duplicate, whichever chunk comes first.
    assert.deepEqual((await appendBatch(pool, M, "hq", [part(0)], new Map())).outcomes, [{ kind: "duplicate", seq: 1n }]);

    let largest = 0;
    let trips = 0;
    const measured = new pg.Pool({ connectionString: db.url, max: 1 });
    watchQueries(measured, {
      sent: () => { trips++; },
      returned: (rs) => { for (const r of rs) largest = Math.max(largest, r.rows.reduce((n, row) => n + (row.body?.length ?? 0), 0)); },
    });
    const images = await changesAt(measured, M, [{ seq: 1n, table: "public.t", key: "[0]" }, { seq: 1n, table: "public.t", key: "[201]" }]);
    assert.equal(JSON.parse(images.get("1\u0000public.t\u0000[0]")!.row).part, PARTS - 1, "the transaction's last change to the row");
    assert.equal(JSON.parse(images.get("1\u0000public.t\u0000[201]")!.row).part, 1);
    const partBytes = Number((await pool.query(`SELECT max(octet_length(body)) AS n FROM ${M}.log`)).rows[0].n);
    assert.ok(largest <= (4 << 20) + partBytes, `one query brought ${largest} bytes of bodies; the whole transaction is ${PARTS * partBytes}`);
    // The common case, an image out of a small transaction, stays one round trip.
    await appendBatch(pool, M, "hq", [{ ...part(0), originTxn: 78n, chunkIndex: 0, lastChunk: true }], new Map());
    trips = 0;
    const small = await changesAt(measured, M, [{ seq: 2n, table: "public.t", key: "[5]" }]);
    assert.equal(JSON.parse(small.get("2\u0000public.t\u0000[5]")!.row).part, 0);
    assert.equal(trips, 1, "one round trip for a one-part transaction");
    await measured.end();
  });

  it("decides a transaction logged in many steps exactly as one logged at once: column-merge, counters, rows changed in several steps", async () => {
    const rnd = seeded(testSeed());
    const merge = new Map([["public.s", { strategy: "column-merge" as const, branchPriority: [], deltaColumns: ["qty"] }]]);
    const ROWS = 300;
    const CHANGES = 6000; // more than one step's worth, in 60 parts; or as one part, which is always one step
    const txnOf = (originTxn: bigint, changes: WireChange[], baseSeq: bigint, hlc: bigint, chunkIndex = 0, lastChunk = true) => {
      const body = toBinary(TransactionSchema, create(TransactionSchema, { originTxn, chunkIndex, lastChunk, changes }));
      return { originTxn, chunkIndex, lastChunk, nChanges: changes.length, body, changes, baseSeq, hlc };
    };
    // x inserts every row (seq 1), then changes the price of half of them (seq 2).
    const inserts = Array.from({ length: ROWS }, (_, i) => ({ table: "public.s", op: Op.INSERT, key: `[${i + 1}]`, row: `{"id": ${i + 1}, "qty": 100, "p": "a"}`, prev: "" }));
    const prices = Array.from({ length: ROWS / 2 }, (_, i) => ({ table: "public.s", op: Op.UPDATE, key: `[${i + 1}]`, row: `{"id": ${i + 1}, "qty": 100, "p": "x"}`, prev: `{"p": ["a"]}` }));
    // y saw only seq 1: it sells (qty, a counter) and renames (p), each row many times, in one transaction.
    const mine = new Map<number, { qty: number; p: string }>();
    const ys: WireChange[] = [];
    for (let i = 0; i < CHANGES; i++) {
      const id = 1 + Math.floor(rnd() * ROWS);
      const was = mine.get(id) ?? { qty: 100, p: "a" };
      const now = rnd() < 0.7 ? { qty: was.qty - 1 - Math.floor(rnd() * 3), p: was.p } : { qty: was.qty, p: `y${i}` };
      mine.set(id, now);
      const prev = now.qty !== was.qty ? `{"qty": [${was.qty}]}` : `{"p": ["${was.p}"]}`;
      ys.push({ table: "public.s", op: Op.UPDATE, key: `[${id}]`, row: `{"id": ${id}, "qty": ${now.qty}, "p": "${now.p}"}`, prev });
    }
    const outcome = async (tenant: string, parts: number) => {
      await createTenant(pool, tenant, tenant);
      const T = tenantSchema(tenant);
      await appendBatch(pool, T, "x", [txnOf(1n, inserts, 0n, 10n)], merge);
      await appendBatch(pool, T, "x", [txnOf(2n, prices, 1n, 20n)], merge);
      const per = CHANGES / parts;
      for (let i = 0; i < parts; i++) {
        const r = await appendBatch(pool, T, "y", [txnOf(9n, ys.slice(i * per, (i + 1) * per), 1n, 30n, i, i === parts - 1)], merge);
        assert.equal(r.outcomes[0].kind, i === parts - 1 ? "accepted" : "staged");
      }
      const logged = await pool.query(`SELECT body FROM ${T}.log WHERE seq = 3 ORDER BY part`);
      const rows = logged.rows.flatMap((r) => decodeTxn(r.body, 0, r.body.length).changes.map((c) => `${c.op} ${c.key} ${c.row}`));
      const state = await pool.query(`SELECT tbl, key, op, seq::text, branch, exact, hlc::text, cols::text, lost::text FROM ${T}.row_state ORDER BY tbl, key`);
      const ledger = await pool.query(`SELECT seq::text, key, kind, existing_branch, incoming_branch, existing_row, incoming_row, result_row, winner_branch, status
                                         FROM ${T}.conflicts ORDER BY id`);
      return { rows, state: state.rows, ledger: ledger.rows };
    };
    const stepped = await outcome("stepped", 60);
    const whole = await outcome("whole", 1);
    assert.equal(stepped.rows.length, CHANGES);
    assert.ok(whole.ledger.length > 0, "y's changes conflict with x's prices");
    assert.deepEqual(stepped.rows, whole.rows, "the same resolved rows in the log");
    assert.deepEqual(stepped.state, whole.state, "the same row versions");
    assert.deepEqual(stepped.ledger, whole.ledger, "the same conflicts recorded");
  });
});
