import assert from "node:assert/strict";
import { startCluster, type Cluster, type Branch } from "./support/cluster.ts";
import { waitFor } from "./support/db.ts";

const DDL = `CREATE TABLE exact (  -- a column named like a common alias ("n") on purpose

  id bigint PRIMARY KEY,
  n numeric(30,10), ts timestamptz, d date, j jsonb, b bytea, u uuid, arr text[],
  i8 bigint, t text, f8 double precision, nums numeric[], flag boolean, iv interval, ts0 timestamp, js json)`;

const COLS = ["n", "ts", "d", "j", "b", "u", "arr", "i8", "t", "f8", "nums", "flag", "iv", "ts0", "js"];

// Values chosen to break anything that goes through a float, a time zone or a
// lossy JSON parse.
const ROWS = [
  `(1, 12345678901234567890.0123456789, '2024-02-29 23:59:59.999999+05:45', '0001-01-01', '{"a":[1,2.50,{"b":null}],"big":123456789012345678901234567890}',
    '\\x00ff10', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', ARRAY['x', NULL, '', 'with,comma', 'quote"'], 9223372036854775807, '',
    0.1, ARRAY[1.10, 2.000]::numeric[], true, '1 year 2 mons 3 days 04:05:06.789', '2000-01-01 00:00:00.000001', '{"b":1,  "a":2, "a":3}')`,
  `(2, -0.0000000001, '1970-01-01 00:00:00+00', '9999-12-31', 'null', '\\x', '00000000-0000-0000-0000-000000000000', ARRAY[]::text[], -9223372036854775808, NULL,
    1.7976931348623157e308, NULL, false, '-1 days', '1999-12-31 23:59:59', 'null')`,
  `(3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 'NULL', 'NaN', ARRAY[NULL]::numeric[], NULL, NULL, NULL, NULL)`,
  `(4, 'NaN', 'infinity', '-infinity', '"just a string"', E'\\\\x5c00', 'ffffffff-ffff-ffff-ffff-ffffffffffff', ARRAY['ü', '😀'], 0, ' ', '-Infinity', ARRAY[0.1]::numeric[], NULL, '0', 'infinity', '  [1, 2.50]  ')`,
];

describe("exact values", function () {
  this.timeout(60_000);
  let c: Cluster;
  let a: Branch;
  let b: Branch;

  before(async () => {
    c = await startCluster();
    await c.addTenant("types");
    a = await c.addBranch("types", "origin", DDL, ["exact"]);
    b = await c.addBranch("types", "copy", DDL, ["exact"]);
    // Different session time zones on purpose: values must not drift.
    await a.db.pool.query(`ALTER DATABASE "${a.db.name}" SET timezone = 'Asia/Kathmandu'`);
    await b.db.pool.query(`ALTER DATABASE "${b.db.name}" SET timezone = 'America/Los_Angeles'`);
    await a.start();
    await b.start();
  });
  after(async () => { await c?.close(); });

  it("round-trips numeric, timestamptz, date, jsonb, bytea, uuid, arrays, int8 extremes, NULL vs ''", async () => {
    await a.db.pool.query(`INSERT INTO exact VALUES ${ROWS.join(",")}`);
    await waitFor("rows on B", async () => (await b.db.pool.query("SELECT count(*)::int AS n FROM exact")).rows[0].n === ROWS.length, 5000);
    // Compare on B itself: ship A's rows over as literals of their own text form.
    const { rows } = await a.db.pool.query(`SELECT id, ${COLS.map((col) => `${col}::text AS ${col}`).join(", ")} FROM exact ORDER BY id`);
    for (const r of rows) {
      for (const col of COLS) {
        const type = (await b.db.pool.query(
          `SELECT format_type(atttypid, atttypmod) AS t FROM pg_attribute WHERE attrelid = 'exact'::regclass AND attname = $1`, [col])).rows[0].t;
        const same = await b.db.pool.query(
          `SELECT (${col}${type === "json" ? "::text" : ""} IS NOT DISTINCT FROM $1::${type === "json" ? "text" : type}) AS ok, ${col}::text AS got FROM exact WHERE id = $2`, [r[col], r.id]);
        assert.equal(same.rows[0].ok, true, `row ${r.id} column ${col}: A has ${r[col]}, B has ${same.rows[0].got}`);
      }
    }
    // timestamptz: same instant regardless of the two branches' time zones.
    const ta = await a.db.pool.query("SELECT extract(epoch FROM ts)::text AS e FROM exact WHERE id = 1");
    const tb = await b.db.pool.query("SELECT extract(epoch FROM ts)::text AS e FROM exact WHERE id = 1");
    assert.equal(tb.rows[0].e, ta.rows[0].e);
    const nullVsEmpty = await b.db.pool.query("SELECT id, t IS NULL AS isnull, t = '' AS isempty FROM exact WHERE id IN (1, 2) ORDER BY id");
    assert.deepEqual(nullVsEmpty.rows, [{ id: "1", isnull: false, isempty: true }, { id: "2", isnull: true, isempty: null }]);
  });
});
