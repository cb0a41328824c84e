import assert from "node:assert/strict";
import type pg from "pg";
import { createDb, type TestDb } from "./support/db.ts";
import { ITEMS_DDL } from "./support/cluster.ts";
import { introspect } from "../agent/capture/introspect.ts";
import { installCapture, UNIT_ROWS } from "../agent/capture/install.ts";
import { readBatch, setAside } from "../agent/capture/reader.ts";
import { unitKeys, unitRows } from "../agent/capture/units.ts";
import { splitJsonArray } from "../lib/jsonsplit.ts";
import { makeClock } from "../agent/capture/clock.ts";
import { Op } from "../gen/branchsync/v1/sync_pb.ts";
import { startHousekeeping, DEAD_ROWS_THRESHOLD } from "../agent/capture/housekeeping.ts";
import { quiet } from "./support/cluster.ts";
import { plansDuring } from "./support/plans.ts";
import { captureItems } from "./support/capture.ts";

describe("change capture (branch database level)", function () {
  this.timeout(30_000);
  let db: TestDb;
  before(async () => { db = await createDb("capture", ITEMS_DDL); });
  after(async () => { await db?.drop(); });

  /** Every kind of value a row can hold, and a key of two columns. */
  const ODD_ROWS = `(1, 'quote " back \\ tab 	 nl 
 ctl ' || chr(1), 'x', 1.50, 1e-7, true, '2026-01-01T00:00:00Z', '2026-02-03', '{1,NULL,3}', '{"a,b",NULL}',
         '\\x00ff', '{"z": [1, 2], "a": null}', '{"z": [1, 2], "a": null}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '1 day', 9007199254740993),
        (2, NULL, 'y', NULL, 'NaN', NULL, NULL, NULL, '{}', NULL, NULL, 'null', 'null', NULL, NULL, NULL),
        (3, '😀', 'z', -0.0, '-Infinity', false, 'infinity', '-infinity', NULL, '{}', '', '[]', '{}', NULL, '-1 mon', -5)`;
  async function oddColsDb(label: string): Promise<TestDb> {
    const odd = await createDb(label, `CREATE TABLE oddcols (id int, s text, k2 text, PRIMARY KEY (id, k2),
      n numeric, f float8, b boolean, ts timestamptz, d date, a int[], t text[], by bytea, j json, jb jsonb, u uuid, iv interval, q bigint)`);
    const c = await odd.pool.connect();
    try { await installCapture(c, [await introspect(c, "public.oddcols")], "t", "b"); } finally { c.release(); }
    return odd;
  }

  async function install() {
    return captureItems(db.pool);
  }

  it("records the base cursor, the changed columns with old values, and keeps units readable across the json migration", async () => {
    await install();
    await db.pool.query("UPDATE _branchsync.state SET cursor = 41, hlc = 7");
    await db.pool.query("INSERT INTO items VALUES (1, 'a', 5, 1.50, NULL, '2026-01-01T00:00:00Z')");
    await db.pool.query("UPDATE items SET qty = 4, note = 'n' WHERE id = 1");
    // An install from before units were json: columns jsonb, an old hash.
    await db.pool.query(`ALTER TABLE _branchsync.changes ALTER COLUMN keys TYPE jsonb USING keys::jsonb,
      ALTER COLUMN rows TYPE jsonb USING rows::jsonb, ALTER COLUMN prevs TYPE jsonb USING prevs::jsonb;
      UPDATE _branchsync.state SET capture_hash = 'old'`);
    await install();
    const types = await db.pool.query(`SELECT string_agg(format_type(atttypid, NULL), ',' ORDER BY attname) AS t FROM pg_attribute
      WHERE attrelid = '_branchsync.changes'::regclass AND attname IN ('keys', 'rows', 'prevs')`);
    assert.equal(types.rows[0].t, "text,text,text");
    // An install of session 6: old values as json.
    await db.pool.query(`ALTER TABLE _branchsync.changes ALTER COLUMN prevs TYPE json USING prevs::json; UPDATE _branchsync.state SET capture_hash = 'old'`);
    await install();
    const prevType = await db.pool.query(`SELECT format_type(atttypid, NULL) AS t FROM pg_attribute WHERE attrelid = '_branchsync.changes'::regclass AND attname = 'prevs'`);
    assert.equal(prevType.rows[0].t, "text");
    // A 100-row unit is kilobytes; the default pglz costs the writer three times what lz4 does.
    const lz4 = await db.pool.query(`SELECT string_agg(attcompression::text, ',' ORDER BY attname) AS c FROM pg_attribute
      WHERE attrelid = '_branchsync.changes'::regclass AND attname IN ('keys', 'rows', 'prevs')`);
    assert.equal(lz4.rows[0].c, "l,l,l");
    const r = await readBatch(db.pool, [], 100, null, makeClock(0));
    assert.equal(r.transactions.length, 2);
    const [ins, upd] = r.transactions;
    assert.equal(ins.baseSeq, 41n);
    assert.ok(upd.hlc > ins.hlc && ins.hlc > 7n, "HLCs above what was seen, increasing");
    assert.equal(ins.changes[0].op, Op.INSERT);
    assert.equal(ins.changes[0].key, "[1]");
    assert.equal(ins.changes[0].prev, "");
    assert.deepEqual(JSON.parse(upd.changes[0].prev), { qty: [5], note: [null] });
    assert.equal(JSON.parse(upd.changes[0].row).price, 1.5);
    assert.match(upd.changes[0].row, /"price": ?1\.50/, `numbers keep their exact text: ${upd.changes[0].row}`);
  });

  it("pairs a large update's old and new rows with a hash join, also after single-row updates in the session", async () => {
    // plpgsql keeps a plan from the session's first statements; a nested
    // loop made then turned a 10,000-row update into an 18 s quadratic pairing.
    await install();
    await db.pool.query("INSERT INTO items SELECT g, 's', 1, 1, NULL, now() FROM generate_series(1000, 1299) g");
    const c = await db.pool.connect();
    let plans: string[];
    try {
      for (let i = 0; i < 6; i++) await c.query("UPDATE items SET qty = qty + 1 WHERE id = 1000");
      plans = (await plansDuring(c, () => c.query("UPDATE items SET qty = qty + 1 WHERE id BETWEEN 1000 AND 1299")))
        .filter((p) => p.includes("old_rows"));
    } finally {
      c.release(true);
    }
    // The statement's size (with how many keys changed) and its units.
    assert.equal(plans.length, 2, `the capture statements' plans: ${plans.join("\n---\n")}`);
    for (const p of plans) {
      assert.match(p, /Hash (Right |Left )?(Anti )?Join/);
      assert.doesNotMatch(p, /Nested Loop|Merge/);
    }
  });

  it("writes a statement's rows as units of at most UNIT_ROWS, with each row's key, image and old values side by side", async () => {
    // Small statements take one unsorted aggregate, large ones are numbered
    // into units; both must keep the parallel arrays aligned.
    await install();
    await db.pool.query("DELETE FROM _branchsync.changes; DELETE FROM _branchsync.txns");
    const base = 300_000;
    // Row images as the agent puts them together from the unit's column arrays.
    const units = async () => (await db.pool.query(
      "SELECT c.op, c.n, c.tbl, c.keys::text AS keys, c.rows, c.prevs, c.cols FROM _branchsync.changes c ORDER BY c.id")).rows.map((u) => {
      const keys = unitKeys(u).map((k) => JSON.parse(k));
      const rows = unitRows(u, keys.length).map((r) => JSON.parse(r));
      const prevs = u.prevs === null ? null : splitJsonArray(u.prevs).map((p) => JSON.parse(p));
      return {
        op: u.op, n: u.n, nk: keys.length, nr: rows.length, np: prevs ? prevs.length : -1, colwise: u.cols !== null,
        misaligned: keys.filter((k, i) => k[0] !== rows[i].id).length,
        bad_prev: prevs ? prevs.filter((p, i) => p !== null && p.qty[0] !== rows[i].qty - 1).length : 0,
      };
    });
    const check = async (sql: string, want: { op: string; total: number; units: number; prevs?: boolean }[]) => {
      await db.pool.query("DELETE FROM _branchsync.changes");
      await db.pool.query(sql);
      const got = await units();
      for (const u of got) {
        assert.ok(u.n >= 1 && u.n <= UNIT_ROWS, `${sql}: unit of ${u.n} rows`);
        assert.equal(u.nk, u.n, sql);
        assert.equal(u.nr, u.n, sql);
        assert.ok(u.colwise, `${sql}: rows as column arrays`);
        assert.equal(u.misaligned, 0, `${sql}: keys and rows out of step`);
        assert.equal(u.bad_prev, 0, `${sql}: old values out of step`);
      }
      for (const w of want) {
        const mine = got.filter((u) => u.op === w.op);
        assert.equal(mine.reduce((s, u) => s + u.n, 0), w.total, `${sql}: ${w.op} rows`);
        assert.equal(mine.length, w.units, `${sql}: ${w.op} units`);
        for (const u of mine) assert.equal(u.np, w.prevs ? u.n : -1, `${sql}: ${w.op} old values`);
      }
      assert.equal(got.length, want.reduce((s, w) => s + w.units, 0), sql);
    };
    await check(`INSERT INTO items SELECT g, 's', g, 1, NULL, now() FROM generate_series(${base + 1}, ${base + 600}) g`, [{ op: "I", total: 600, units: 3 }]);
    await check(`INSERT INTO items SELECT g, 's', g, 1, NULL, now() FROM generate_series(${base + 601}, ${base + 600 + UNIT_ROWS}) g`, [{ op: "I", total: UNIT_ROWS, units: 1 }]);
    await check(`UPDATE items SET qty = qty + 1 WHERE id BETWEEN ${base + 1} AND ${base + 600}`, [{ op: "U", total: 600, units: 3, prevs: true }]);
    await check(`UPDATE items SET qty = qty + 1 WHERE id BETWEEN ${base + 1} AND ${base + 40}`, [{ op: "U", total: 40, units: 1, prevs: true }]);
    // Re-keyed rows: deletes of the old keys, new rows without old values.
    await check(`UPDATE items SET id = id + 10000, qty = qty + 1 WHERE id BETWEEN ${base + 1} AND ${base + 300}`,
      [{ op: "D", total: 300, units: 2 }, { op: "U", total: 300, units: 2, prevs: true }]);
    await check(`UPDATE items SET id = id + 10000, qty = qty + 1 WHERE id BETWEEN ${base + 301} AND ${base + 305}`,
      [{ op: "D", total: 5, units: 1 }, { op: "U", total: 5, units: 1, prevs: true }]);
    await check(`DELETE FROM items WHERE id BETWEEN ${base + 10001} AND ${base + 10300}`, [{ op: "D", total: 300, units: 2 }]);
    await check(`DELETE FROM items WHERE id = ${base + 10301}`, [{ op: "D", total: 1, units: 1 }]);
    // Statements that touch nothing write nothing, and do not fail.
    const txns = (await db.pool.query("SELECT count(*)::int AS n FROM _branchsync.txns")).rows[0].n;
    await check(`UPDATE items SET qty = 0 WHERE id < 0; DELETE FROM items WHERE id < 0; INSERT INTO items SELECT 1, 's', 1, 1, NULL, now() WHERE false`, []);
    assert.equal((await db.pool.query("SELECT count(*)::int AS n FROM _branchsync.txns")).rows[0].n, txns, "no transaction noted for nothing");
    await db.pool.query(`DELETE FROM items WHERE id > ${base}; DELETE FROM _branchsync.changes; DELETE FROM _branchsync.txns`);
  });

  it("lists changed columns of a table wider than one SQL function call takes (100 arguments)", async () => {
    const wide = await createDb("capwide", `CREATE TABLE w (id int PRIMARY KEY, ${Array.from({ length: 120 }, (_, i) => `c${i} int DEFAULT 0`).join(", ")})`);
    try {
      const c = await wide.pool.connect();
      try { await installCapture(c, [await introspect(c, "public.w")], "t", "b"); } finally { c.release(); }
      await wide.pool.query("INSERT INTO w (id) VALUES (1)");
      await wide.pool.query("UPDATE w SET c5 = 1, c95 = 2, c119 = 3 WHERE id = 1");
      await wide.pool.query("UPDATE w SET c7 = c7 WHERE id = 1");
      const r = await readBatch(wide.pool, [], 100, null, makeClock(0));
      assert.deepEqual(r.transactions.map((t) => t.changes[0].prev), ["", '{"c5":[0],"c95":[0],"c119":[0]}', "{}"]);
      // 121 column arrays: more than one concat_ws takes.
      const now = await wide.pool.query("SELECT to_json(w.*)::text AS r FROM w");
      assert.equal(r.transactions[2].changes[0].row, now.rows[0].r);

    } finally {
      await wide.drop();
    }
  });

  it("puts row images together from column arrays byte for byte as to_json(row) prints them, for every kind of value, and reads units queued in the older row format", async () => {
    const odd = await oddColsDb("capcols");
    try {
      await odd.pool.query(`INSERT INTO oddcols VALUES ${ODD_ROWS}`);
      const r = await readBatch(odd.pool, [], 100, null, makeClock(0));
      const rows = r.transactions[0].changes.map((ch) => ch.row);
      // json/jsonb values travel as the string of their text; everything else exactly as to_json(row).
      const want = await odd.pool.query(`SELECT (to_jsonb(w.*) - 'j' - 'jb')::text AS rest, j::text AS j, jb::text AS jb, to_json(w.*)::text AS whole,
        json_build_array(id, k2)::text AS key FROM oddcols w ORDER BY id`);
      // Keys byte for byte as json_build_array of the key columns: the hub and every branch compare them as text.
      assert.deepEqual(r.transactions[0].changes.map((ch) => ch.key).sort(), want.rows.map((w) => w.key).sort());
      assert.equal(rows.length, 3);
      const sorted = rows.map((x) => JSON.parse(x)).sort((x, y) => x.id - y.id);
      for (let i = 0; i < 3; i++) {
        const got = sorted[i];
        assert.deepEqual({ ...got, j: undefined, jb: undefined }, { ...JSON.parse(want.rows[i].rest), j: undefined, jb: undefined });
        assert.equal(got.j, want.rows[i].j);
        assert.equal(got.jb, want.rows[i].jb);
        const image = rows.find((x) => JSON.parse(x).id === i + 1)!;
        const plain = (text: string) => text.replace(/,"j":.*,"jb":.*?,"u":/, ',"u":');
        assert.equal(plain(image), plain(want.rows[i].whole), "the same bytes as to_json(row) outside the json columns");
      }
      // Old values of changed columns, as to_json printed each (json columns as the string of their text).
      const before = (await odd.pool.query(`SELECT id, to_json(s)::text AS s, to_json(b)::text AS b, to_json(ts)::text AS ts, to_json(a)::text AS a,
        to_json(j::text)::text AS j, to_json(q)::text AS q FROM oddcols WHERE id IN (1, 2) ORDER BY id`)).rows;
      await odd.pool.query(`UPDATE oddcols SET s = NULL, n = n, b = NOT b, a = '{9}', j = '{"b": 1}', ts = now(), q = q + 1 WHERE id IN (1, 2)`);
      const u = await readBatch(odd.pool, [r.transactions[0].originTxn.toString()], 100, null, makeClock(0));
      const prevOf = (id: number) => u.transactions[0].changes.find((ch) => JSON.parse(ch.row).id === id)!.prev;
      assert.equal(prevOf(1), `{"s":[${before[0].s}],"b":[${before[0].b}],"ts":[${before[0].ts}],"a":[${before[0].a}],"j":[${before[0].j}],"q":[${before[0].q}]}`);
      assert.equal(before[0].q, "9007199254740993");
      assert.equal(prevOf(2), `{"ts":[null],"a":[${before[1].a}],"j":[${before[1].j}]}`, "NULL to NULL is no change");
      // A unit written by an agent before column arrays: rows are row images, cols is NULL.
      await odd.pool.query(`DELETE FROM _branchsync.changes; DELETE FROM _branchsync.txns;
        BEGIN;
        INSERT INTO _branchsync.changes(txid, tbl, op, n, keys, rows, prevs) VALUES
          (pg_current_xact_id(), 'public.oddcols', 'I', 2, '[[7, "q"], [8, "r"]]', '[{"id":7,"k2":"q","n":1}, 
 {"id":8,"k2":"r","n":null}]', NULL);
        SELECT _branchsync.note_txn(pg_current_xact_id(), (SELECT max(id) FROM _branchsync.changes), 2);
        COMMIT`);
      const old = await readBatch(odd.pool, [], 100, null, makeClock(0));
      assert.deepEqual(old.transactions[0].changes.map((ch) => [ch.key, ch.row]), [['[7, "q"]', '{"id":7,"k2":"q","n":1}'], ['[8, "r"]', '{"id":8,"k2":"r","n":null}']]);
    } finally {
      await odd.drop();
    }
  });

  it("writes a single-row statement's unit (no aggregates) byte for byte as a larger statement's, for every kind of value, re-keyed rows too", async () => {
    const one = await oddColsDb("capone");
    try {
      /** Every captured change since the last call, in queue order: [op, key, row, prev]. */
      const drain = async () => {
        const r = await readBatch(one.pool, [], 1000, null, makeClock(0));
        await one.pool.query("DELETE FROM _branchsync.changes; DELETE FROM _branchsync.txns");
        return r.transactions.flatMap((t) => t.changes.map((ch) => [ch.op, ch.key, ch.row, ch.prev]));
      };
      // An untracked copy to insert from, whole or a row at a time.
      await one.pool.query(`CREATE TABLE src (LIKE oddcols); INSERT INTO src VALUES ${ODD_ROWS}; INSERT INTO oddcols SELECT * FROM src`);
      const many = await drain();
      assert.equal(many.length, 3);
      const byKey = (rows: unknown[][]) => [...rows].sort((x, y) => String(x[1]).localeCompare(String(y[1])));
      // The same rows, one statement each: inserts, no-op updates (old values {}), deletes.
      await one.pool.query("DELETE FROM oddcols");
      await drain();
      for (const id of [1, 2, 3]) await one.pool.query(`INSERT INTO oddcols SELECT * FROM src WHERE id = ${id}`);
      assert.deepEqual(byKey(await drain()), byKey(many));
      for (const id of [1, 2, 3]) await one.pool.query(`UPDATE oddcols SET s = s, q = q WHERE id = ${id}`);
      assert.deepEqual(byKey(await drain()), byKey(many.map(([, key, row]) => [Op.UPDATE, key, row, "{}"])));
      await one.pool.query("UPDATE oddcols SET s = s");
      assert.deepEqual(byKey(await drain()), byKey(many.map(([, key, row]) => [Op.UPDATE, key, row, "{}"])));
      // Old values of a single-row update, as the three-row statement writes them.
      await one.pool.query("UPDATE oddcols SET s = 'new', jb = '[1]', q = q + 1");
      const changedMany = byKey(await drain());
      await one.pool.query("UPDATE oddcols o SET s = src.s, jb = src.jb, q = src.q FROM src WHERE src.id = o.id");
      await drain();
      for (const id of [1, 2, 3]) await one.pool.query(`UPDATE oddcols SET s = 'new', jb = '[1]', q = q + 1 WHERE id = ${id}`);
      assert.deepEqual(byKey(await drain()), changedMany);
      // A single-row update that changes the key: the old key's delete first, then the row without old values.
      const before = (await one.pool.query("SELECT json_build_array(id, k2)::text AS k FROM oddcols WHERE id = 2")).rows[0].k;
      await one.pool.query("UPDATE oddcols SET id = 20, q = 7 WHERE id = 2");
      const after = (await one.pool.query("SELECT json_build_array(id, k2)::text AS k, to_json(w.*)::text AS r FROM oddcols w WHERE id = 20")).rows[0];
      const rekeyed = await drain();
      assert.deepEqual(rekeyed.map(([op, key, , prev]) => [op, key, prev]), [[Op.DELETE, before, ""], [Op.UPDATE, after.k, ""]]);
      assert.equal((rekeyed[1][2] as string).replace(/,"j":.*,"jb":.*?,"u":/, ',"u":'), after.r.replace(/,"j":.*,"jb":.*?,"u":/, ',"u":'));
      // Several single-row statements of one transaction: one transaction, all its rows, counted once each.
      await one.pool.query("BEGIN; UPDATE oddcols SET q = 1 WHERE id = 1; DELETE FROM oddcols WHERE id = 3; UPDATE oddcols SET q = 2 WHERE id = 1; COMMIT");
      const txns = (await one.pool.query("SELECT n FROM _branchsync.txns")).rows;
      assert.deepEqual(txns, [{ n: 3 }]);
      assert.deepEqual((await drain()).map(([op]) => op), [Op.UPDATE, Op.DELETE, Op.UPDATE]);
    } finally {
      await one.drop();
    }
  });

  it("reads a batch by index probes, also on a connection that first read a short queue", async () => {
    // A branch back from days offline: its sender's connection planned the
    // read when the queue was short, and the statistics are those of the
    // housekeeping VACUUM that emptied it (pages kept, no rows); the backlog
    // must not be sorted or scanned whole for every batch.
    await install();
    await db.pool.query("INSERT INTO items SELECT g, 'sent', 1, 1, repeat('x', 200), now() FROM generate_series(100000, 119999) g");
    await db.pool.query("DELETE FROM items WHERE id >= 100000; DELETE FROM _branchsync.changes; DELETE FROM _branchsync.txns");
    await db.pool.query("VACUUM (ANALYZE) _branchsync.txns, _branchsync.changes");
    const c = await db.pool.connect();
    let plans: string[];
    try {
      await c.query("INSERT INTO items VALUES (200000, 'first', 1, 1, NULL, now())");
      for (let i = 0; i < 8; i++) await c.query("SELECT * FROM _branchsync.read_batch('{}', 500)");
      for (let i = 0; i < 40; i++) {
        await c.query("INSERT INTO items SELECT g, 'offline', 1, 1, NULL, now() FROM generate_series($1::int, $1::int + 49) g", [200001 + i * 50]);
      }
      // As the slow bench run had it: many more transactions, analyzed
      // since (by autovacuum), the units' statistics still the empty queue's.
      for (let i = 0; i < 300; i++) await c.query("INSERT INTO items VALUES ($1, 'later', 1, 1, NULL, now())", [300000 + i]);
      await c.query("ANALYZE _branchsync.txns");
      plans = await plansDuring(c, async () => {
        const { rows } = await c.query("SELECT txid, fits FROM _branchsync.read_batch('{}', 500)");
        assert.equal(new Set(rows.filter((r) => r.fits).map((r) => r.txid)).size, 10, "1 + 9 x 50 rows fit in 500");
      });
    } finally {
      c.release(true);
    }
    const read = plans.filter((p) => p.includes("_branchsync.txns") || p.includes("on txns"));
    assert.ok(read.length > 0, plans.join("\n---\n"));
    // No sort of the backlog either: the oldest come in index order, and the LIMIT stops there.
    for (const p of read) assert.doesNotMatch(p, /Seq Scan|Bitmap Heap Scan|Hash Join|Sort Key: x\.last_id|JIT:/, p);
    // And each transaction's units by a probe, not all units filtered for each.
    const units = read.filter((p) => p.includes("changes c"));
    assert.ok(units.length > 0, read.join("\n---\n"));
    for (const p of units) {
      assert.match(p, /Index Cond: \(c\.txid = p\.x\)|Index Cond: \(txid = p\.x\)/, p);
      assert.doesNotMatch(p, /Materialize|Rows Removed by Join Filter/, p);
    }
    await db.pool.query("DELETE FROM items WHERE id >= 200000; DELETE FROM _branchsync.changes; DELETE FROM _branchsync.txns");
  });

  it("prints keys and rows the same whatever the writer's session settings (time zone, float digits, bytea output)", async () => {
    await db.pool.query(`CREATE TABLE shifts (starts timestamptz, till bytea, PRIMARY KEY (starts, till), rate float8, len interval)`);
    const c = await db.pool.connect();
    try {
      await installCapture(c, [await introspect(c, "public.shifts")], "t", "b");
      const units = async () => (await c.query("SELECT tbl, keys, rows, cols FROM _branchsync.changes WHERE tbl = 'public.shifts' ORDER BY id")).rows
        .map((u) => ({ k: unitKeys(u)[0], r: unitRows(u, 1)[0] }));
      const write = async (settings: string, id: string) => {
        await c.query(`BEGIN; ${settings}; INSERT INTO shifts VALUES ('2026-01-01 09:00:00+05:30', '\\x${id}', 0.1, '1 day 2 hours'); COMMIT`);
      };
      await write("SET LOCAL TimeZone = 'Asia/Kolkata'; SET LOCAL extra_float_digits = 3; SET LOCAL bytea_output = 'escape'; SET LOCAL IntervalStyle = 'iso_8601'", "01");
      await c.query("DELETE FROM shifts");
      await write("SET LOCAL TimeZone = 'America/New_York'", "01");
      const [a, , b] = await units();
      assert.ok(a && b, "insert, delete, insert captured");
      assert.equal(a.k, b.k, "one row, one key, in every session");
      assert.equal(a.r, b.r);
      assert.match(a.k, /"2026-01-01T03:30:00\+00:00"/);
      assert.match(a.k, /"\\\\x01"/);
      assert.match(a.r, /"rate":0\.1,/);
      assert.match(a.r, /"len":"1 day 02:00:00"/);
      // The writer's own settings are as it left them.
      assert.equal((await c.query("SHOW TimeZone")).rows[0].TimeZone, (await db.pool.query("SHOW TimeZone")).rows[0].TimeZone);
    } finally {
      await c.query("ROLLBACK").catch(() => undefined);
      c.release();
      await db.pool.query("DROP TABLE shifts CASCADE");
    }
  });

  it("sets a rejected transaction aside whole, with its keys and row images as the hub saw them", async () => {
    await install();
    await db.pool.query("DELETE FROM _branchsync.changes; DELETE FROM _branchsync.txns; DELETE FROM _branchsync.rejected");
    await db.pool.query(`BEGIN; INSERT INTO items SELECT g, 's' || g, g, 1.25, NULL, '2026-01-01T00:00:00Z' FROM generate_series(400001, 400300) g;
      DELETE FROM items WHERE id = 400001; COMMIT`);
    const sent = await readBatch(db.pool, [], 1000, null, makeClock(0));
    assert.equal(sent.transactions.length, 1);
    const t = sent.transactions[0];
    await setAside(db.pool, t.originTxn.toString(), "refused for the test");
    const { rows } = await db.pool.query("SELECT op, n, keys::text AS keys, rows::text AS rows, error FROM _branchsync.rejected WHERE txid = $1::xid8 ORDER BY op DESC, n DESC",
      [t.originTxn.toString()]);
    // Two insert units (250 + 50 rows) and the delete.
    assert.deepEqual(rows.map((r) => [r.op, r.n, r.error]), [["I", 250, "refused for the test"], ["I", 50, "refused for the test"], ["D", 1, "refused for the test"]]);
    // rejected holds jsonb (keys sorted): compare values, not key order.
    const canon = (v: unknown) => JSON.stringify(v, v && typeof v === "object" && !Array.isArray(v) ? Object.keys(v).sort() : undefined);
    const byOp = (op: string, f: (r: { keys: string; rows: string }) => string) => rows.filter((r) => r.op === op).flatMap((r) => JSON.parse(f(r))).map(canon).sort();
    const sentAs = (op: Op, f: (ch: { key: string; row: string }) => string) => t.changes.filter((ch) => ch.op === op).map((ch) => canon(JSON.parse(f(ch)))).sort();
    assert.deepEqual(byOp("I", (r) => r.keys), sentAs(Op.INSERT, (ch) => ch.key));
    assert.deepEqual(byOp("I", (r) => r.rows), sentAs(Op.INSERT, (ch) => ch.row));
    assert.deepEqual(byOp("D", (r) => r.rows), sentAs(Op.DELETE, (ch) => ch.row));
    assert.equal(byOp("I", (r) => r.rows).length, 300);
    const left = await db.pool.query("SELECT (SELECT count(*) FROM _branchsync.changes)::int AS c, (SELECT count(*) FROM _branchsync.txns)::int AS t");
    assert.deepEqual(left.rows[0], { c: 0, t: 0 });
    await db.pool.query("DELETE FROM items WHERE id > 400000");
  });

  it("vacuums the change-log queues once dead rows pile up, and reads only what is unsent", async () => {
    await install();
    // What a busy till leaves behind: many transactions captured, sequenced
    // and passed (one txns row each; written directly, as one statement).
    await db.pool.query("INSERT INTO items SELECT g, 'q', 1, 1, NULL, now() FROM generate_series(100000, 100499) g");
    const before = await readBatch(db.pool, [], 100_000, null, makeClock(0));
    assert.equal(before.more, false);
    const n = DEAD_ROWS_THRESHOLD + 500;
    // One connection does the churn and then flushes its statistics (an
    // idle backend would report them only after 10 s).
    const c = await db.pool.connect();
    try {
      await c.query(`INSERT INTO _branchsync.txns(txid, last_id, n) SELECT (1000000 + g)::text::xid8, -g, 1 FROM generate_series(1, ${n}) g`);
      await c.query("UPDATE _branchsync.txns SET seq = 1");
      await c.query("DELETE FROM _branchsync.changes; DELETE FROM _branchsync.txns");
      await c.query("SELECT pg_stat_force_next_flush()");
      await c.query("SELECT 1");
    } finally { c.release(); }
    const dead = async () => (await db.pool.query(
      "SELECT coalesce(max(n_dead_tup), 0)::int AS d FROM pg_stat_user_tables WHERE schemaname = '_branchsync' AND relname = 'txns'")).rows[0].d;
    const end = Date.now() + 5000;
    while ((await dead()) <= DEAD_ROWS_THRESHOLD && Date.now() < end) await new Promise((r) => setTimeout(r, 100));
    assert.ok((await dead()) > DEAD_ROWS_THRESHOLD, "the statistics show the dead rows");
    const pages = async () => (await db.pool.query("SELECT pg_relation_size('_branchsync.txns')::int AS b")).rows[0].b;
    const filled = await pages();
    const hk = startHousekeeping(db.pool, quiet, 60_000);
    try {
      assert.ok((await hk.runOnce()).includes("_branchsync.txns"));
      assert.ok((await dead()) < DEAD_ROWS_THRESHOLD, "vacuumed");
      // Emptied but not cut short: truncating takes a lock every capturing writer waits for.
      assert.ok(filled > 0 && (await pages()) === filled, `txns kept its ${filled} bytes of pages`);
      const opts = await db.pool.query(`SELECT c.relname, c.reloptions::text AS o FROM pg_class c
        WHERE c.oid IN ('_branchsync.changes'::regclass, '_branchsync.txns'::regclass,
                        (SELECT reltoastrelid FROM pg_class WHERE oid = '_branchsync.changes'::regclass)) ORDER BY c.relname LIKE 'pg_toast%', c.relname`);
      assert.deepEqual(opts.rows.map((r) => r.o), ["{vacuum_truncate=false}", "{vacuum_truncate=false}", "{vacuum_truncate=false}"]);
      assert.deepEqual(await hk.runOnce(), [], "nothing left to do");
    } finally {
      await hk.stop();
    }
    await db.pool.query("INSERT INTO items VALUES (99, 'late', 1, 1, NULL, now())");
    const after = await readBatch(db.pool, [], 100, null, makeClock(0));
    assert.deepEqual(after.transactions.map((t) => t.changes.map((ch) => ch.key)), [["[99]"]]);
  });
});

describe("reading large transactions in chunks (branch database level)", function () {
  this.timeout(30_000);
  let db: TestDb;
  before(async () => {
    db = await createDb("chunks", ITEMS_DDL);
    await captureItems(db.pool);
  });
  after(async () => { await db?.drop(); });
  beforeEach(async () => { await db.pool.query("DELETE FROM items; DELETE FROM _branchsync.changes; DELETE FROM _branchsync.txns"); });

  /** Every chunk of the one pending transaction, read as the sender does. */
  async function chunks(max: number, maxChars?: number) {
    const out: { index: number; last: boolean; ids: number[]; chars: number }[] = [];
    let r = await readBatch(db.pool, [], max, null, makeClock(0), maxChars);
    for (;;) {
      assert.equal(r.transactions.length, 1);
      const t = r.transactions[0];
      out.push({ index: t.chunkIndex, last: t.lastChunk, ids: t.changes.map((c) => Number(JSON.parse(c.key)[0])), chars: t.changes.reduce((s, c) => s + c.row.length, 0) });
      if (!r.chunking) break;
      assert.ok(out.length < 100, "chunking ends");
      r = await readBatch(db.pool, [t.originTxn.toString()], max, r.chunking, makeClock(0), maxChars);
    }
    return out;
  }
  const inOrder = (n: number) => Array.from({ length: n }, (_, i) => i + 1);

  it("cuts a unit larger than a batch between its rows, and marks only the last chunk", async () => {
    // One statement of 600 rows: units of 250, 250 and 100.
    await db.pool.query("INSERT INTO items SELECT g, 's', 1, 1, NULL, now() FROM generate_series(1, 600) g");
    const got = await chunks(100);
    assert.deepEqual(got.map((c) => c.ids.length), [100, 100, 100, 100, 100, 100]);
    assert.deepEqual(got.map((c) => c.index), [0, 1, 2, 3, 4, 5]);
    assert.deepEqual(got.map((c) => c.last), [false, false, false, false, false, true]);
    assert.deepEqual(got.flatMap((c) => c.ids), inOrder(600));
  });

  it("keeps a batch's text under what one message may hold, whole transactions or chunks", async () => {
    const note = "x".repeat(1000);
    await db.pool.query("INSERT INTO items SELECT g, 's', 1, 1, $1, now() FROM generate_series(1, 300) g", [note]);
    const got = await chunks(500, 50_000);
    assert.ok(got.every((c) => c.chars <= 50_000), `chunks of ${got.map((c) => c.chars).join(", ")} characters`);
    assert.ok(got.length >= 6, "several chunks");
    assert.deepEqual(got.flatMap((c) => c.ids), inOrder(300));
    assert.equal(got.filter((c) => c.last).length, 1);
    // Whole transactions: as many as fit, the rest in the next batch.
    await db.pool.query("DELETE FROM _branchsync.changes; DELETE FROM _branchsync.txns");
    for (let i = 1; i <= 20; i++) await db.pool.query("INSERT INTO items VALUES ($1, 's', 1, 1, $2, now())", [1000 + i, note]);
    // A transaction here is about 1,130 characters.
    const first = await readBatch(db.pool, [], 500, null, makeClock(0), 6_000);
    assert.equal(first.transactions.length, 5);
    assert.ok(first.more);
    const second = await readBatch(db.pool, first.transactions.map((t) => t.originTxn.toString()), 500, null, makeClock(0), 6_000);
    assert.deepEqual(second.transactions.map((t) => t.changes[0].key), ["[1006]", "[1007]", "[1008]", "[1009]", "[1010]"]);
  });

  it("ends with a chunk marked last when the remaining units are exactly a full read", async () => {
    // 512 one-row statements against 500-change batches: two reads of 256 units.
    const statements = Array.from({ length: 512 }, (_, i) => `INSERT INTO items VALUES (${i + 1}, 's', 1, 1, NULL, now())`);
    await db.pool.query(`BEGIN; ${statements.join("; ")}; COMMIT`);
    const got = await chunks(500);
    assert.deepEqual(got.map((c) => [c.ids.length, c.last]), [[256, false], [256, true]]);
    assert.deepEqual(got.flatMap((c) => c.ids), inOrder(512));
  });

  it("reads nothing, not an empty chunk, when the transaction's units go while a chunk is read (it was sequenced meanwhile)", async () => {
    await db.pool.query("INSERT INTO items SELECT g, 's', 1, 1, NULL, now() FROM generate_series(1, 600) g");
    const first = await readBatch(db.pool, [], 100, null, makeClock(0));
    assert.ok(first.chunking, "a chunked transaction");
    // The applier deletes a transaction's units once the hub reports it
    // sequenced (a resend came back DUPLICATE); here just after the chunk
    // reader sized the next chunk's units and before it read them.
    const racing = {
      query: async (...args: unknown[]) => {
        const r = await (db.pool.query as (...a: unknown[]) => Promise<pg.QueryResult>)(...args);
        if ((args[0] as { name?: string }).name === "bs-read-units") await db.pool.query("DELETE FROM _branchsync.changes");
        return r;
      },
    } as unknown as pg.Pool;
    const next = await readBatch(racing, [first.transactions[0].originTxn.toString()], 100, first.chunking, makeClock(0));
    // An empty transaction would go to the hub, be refused and set aside with an error.
    assert.deepEqual({ txns: next.transactions.length, chunking: next.chunking }, { txns: 0, chunking: null });
  });
});
