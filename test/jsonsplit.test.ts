import assert from "node:assert/strict";
import pg from "pg";
import { splitJsonArray, splitJsonColumns } from "../lib/jsonsplit.ts";
import { PG_BASE } from "./support/db.ts";

describe("splitting jsonb array text into elements", () => {
  it("cuts exactly where jsonb_array_elements does, for tricky values", async () => {
    const c = new pg.Client({ connectionString: `${PG_BASE}/postgres` });
    await c.connect();
    try {
      const samples = [
        `[]`, `[1]`, `[1, 2.50, -3e10, null, true, false]`, `["a, b", "[x]", "{y}", "q\\"uote", "back\\\\slash", "\\u0001"]`,
        `[{"a": [1, {"b": "]}"}], "c": null}, [[], {}], "😀 ü"]`, `[[42], ["k", 7], [9223372036854775807]]`,
        `[{"s": "line\\nbreak\\ttab", "n": 12345678901234567890.0123456789}]`, `["\\\\", "a\\\\\\"b", "\\\\\\\\"]`,
        `[ {"a":1} ,{"b":"x"}  ]`,
      ];
      const wholes: string[] = [];
      const parts: string[][] = [];
      for (const s of samples) {
        for (const type of ["jsonb", "json"]) {
          const r = await c.query(`SELECT $1::${type}::text AS whole, coalesce(array(SELECT e::text FROM ${type}_array_elements($1::${type}) e), '{}') AS parts`, [s]);
          assert.deepEqual(splitJsonArray(r.rows[0].whole), r.rows[0].parts, `${type}: ${s}`);
          wholes.push(r.rows[0].whole);
          parts.push(r.rows[0].parts);
        }
      }
      // Capture units hold one such array per column, side by side (agent/capture/install.ts).
      assert.deepEqual(splitJsonColumns(`[${wholes.join(",")}]`), parts);
      assert.deepEqual(splitJsonColumns(`[ ${wholes.join(" ,\n ")} ]`), parts);
      assert.deepEqual(splitJsonColumns(`[]`), []);
    } finally {
      await c.end();
    }
  });

  it("refuses text that is not one JSON array", () => {
    for (const bad of [`{"a": 1}`, `[1, 2`, `[1,, 2]`, `[1] x`, `[1,]`, `[1, ]`, `[,]`]) assert.throws(() => splitJsonArray(bad), bad);
    for (const bad of [`[1]`, `[[1], 2]`, `[[1] [2]]`, `[{"a": 1}]`, `[[1],, [2]]`, `[[1]`, `[[1]] x`, `["a"]`, `[[1],]`, `[[1, ]]`, `[[1], [2,]]`]) assert.throws(() => splitJsonColumns(bad), bad);
  });
});
