import assert from "node:assert/strict";
import pg from "pg";
import { intArray, textArray } from "../lib/pgarray.ts";
import { PG_BASE } from "./support/db.ts";
import { seeded, testSeed } from "./support/process.ts";

describe("array literals for parameters", () => {
  // Characters that mean something in an array literal, plus multi-byte ones.
  const ALPHABET = ['"', "\\", ",", "{", "}", " ", "N", "U", "L", "a", "[", "]", "'", "\n", "ü", "😀", "1"];

  it("PostgreSQL reads back exactly the strings and integers given, for random nasty strings", async function () {
    const rng = seeded(testSeed());
    const c = new pg.Client({ connectionString: `${PG_BASE}/postgres` });
    await c.connect();
    try {
      for (let round = 0; round < 50; round++) {
        const values = Array.from({ length: 1 + Math.floor(rng() * 20) }, () =>
          Array.from({ length: Math.floor(rng() * 8) }, () => ALPHABET[Math.floor(rng() * ALPHABET.length)]).join(""));
        values.push("", "NULL", "null", `["k", 7]`);
        const ints = values.map(() => Math.floor(rng() * 2 ** 31) * (rng() < 0.5 ? -1 : 1));
        const r = await c.query(`SELECT $1::text[] AS t, $2::"char"[] AS o, $3::bigint[]::text[] AS n`,
          [textArray(values), textArray(values.map((v) => v.slice(0, 1) === "" ? "I" : "D")), intArray(ints)]);
        assert.deepEqual(r.rows[0].t, values);
        assert.deepEqual(r.rows[0].n, ints.map(String));
        assert.equal(r.rows[0].o, `{${values.map((v) => (v === "" ? "I" : "D")).join(",")}}`);
      }
      const big = await c.query("SELECT $1::bigint[]::text[] AS n", [intArray([9223372036854775807n, -9223372036854775808n, 0n])]);
      assert.deepEqual(big.rows[0].n, ["9223372036854775807", "-9223372036854775808", "0"]);
    } finally {
      await c.end();
    }
  });
});
