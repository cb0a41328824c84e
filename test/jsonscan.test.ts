import assert from "node:assert/strict";
import { Op } from "../gen/branchsync/v1/sync_pb.ts";
import { checkTransaction, parsedChangeError } from "../hub/stream/validate.ts";
import { rowShape, rowLooksValid, keyLooksValid } from "../lib/jsonscan.ts";
import type { TableDef } from "../hub/store/tables.ts";
import { seeded, testSeed } from "./support/process.ts";
import type { Rng } from "../lib/rng.ts";

/**
 * The hub's scan of row images (lib/jsonscan.ts) may send a valid change to
 * the parsing check, but must never pass one the parsing check refuses.
 */
const def: TableDef = {
  name: "public.t",
  primaryKey: ["id", "code"],
  columns: [
    { name: "id", type: "bigint", nullable: false },
    { name: "code", type: "text", nullable: false },
    { name: "qty", type: "integer", nullable: false },
    { name: "price", type: "numeric(12,2)", nullable: true },
    { name: "ok", type: "boolean", nullable: true },
    { name: "doc", type: "jsonb", nullable: true },
    { name: "at", type: "timestamp with time zone", nullable: true },
  ],
};

const pick = <T>(rnd: Rng, xs: T[]): T => xs[Math.floor(rnd() * xs.length)];
const STRINGS = ["a", "", "sku-1", "é€😀", "quote\"d", "back\\slash", "tab\tx", "\u0001", "{\"k\": [1]}", "$bs$"];

function validChange(rnd: Rng) {
  const id = pick(rnd, [0, 1, -7, 2 ** 53 - 1, 123456789012]);
  const code = pick(rnd, [...STRINGS, "a"]);
  const row: Record<string, unknown> = {
    id, code, qty: pick(rnd, [0, -1, 42]), price: pick(rnd, [null, 1.5, 0, -2.25, 1e21, 3]),
    ok: pick(rnd, [null, true, false]), doc: pick(rnd, [null, "{\"a\": 1}"]),
    at: pick(rnd, [null, "2026-11-23T02:40:01.123456+00:00"]),
  };
  const spaced = rnd() < 0.3; // jsonb prints ", " and ": "
  const text = (v: unknown) => (spaced ? JSON.stringify(v).replace(/,"/g, ", \"").replace(/":/g, "\": ") : JSON.stringify(v));
  const op = pick(rnd, [Op.INSERT, Op.UPDATE, Op.DELETE]);
  const prev = op === Op.UPDATE && rnd() < 0.7 ? text({ qty: [pick(rnd, [1, null])], at: [pick(rnd, STRINGS)] }) : "";
  return { table: def.name, op, key: text([id, code]), row: text(row), prev };
}

const ALPHABET = [..."\"\\{}[],:0123456789.-+eEnultrfas \t\nxé", "\u0001", "\u0000", "\\u00e9", "\\q", "null", "true", "1e400", "99999999999999999999999"];

/** Well-formed JSON, wrong for the table: a null, a kind or a column out of place. */
const SEMANTIC: [string, string][] = [
  ['"qty":42', '"qty":null'], ['"id":1,', '"id":null,'], ['"code":"a"', '"code":null'], ['"qty":42', '"qty":"42"'],
  ['"qty":42', '"qty":4.2'], ['"qty":42', `"qty":${"9".repeat(400)}`], ['"qty":42', '"qty":1e2'], ['"ok":true', '"ok":1'],
  ['"doc":null', '"doc":[]'], ['"price":1.5', '"price":"1.5"'], ['"price":1.5', '"price":"NaN"'], ['"at":null', '"at":null,"extra":1'],
  ['"at":null', '"at":null,"at":null'], [',"ok":true', ''], ['"doc":null', '"doc":{"a":1}'],
];

function semantic(rnd: Rng, s: string): string {
  const [from, to] = pick(rnd, SEMANTIC);
  return s.replace(from, to);
}

function mutate(rnd: Rng, s: string): string {
  if (rnd() < 0.3) return semantic(rnd, s);
  const n = 1 + Math.floor(rnd() * 3);
  for (let k = 0; k < n; k++) {
    const at = Math.floor(rnd() * (s.length + 1));
    const r = rnd();
    if (r < 0.4) s = s.slice(0, at) + pick(rnd, ALPHABET) + s.slice(at);
    else if (r < 0.7) s = s.slice(0, at) + s.slice(at + 1);
    else s = s.slice(0, at) + pick(rnd, ALPHABET) + s.slice(at + 1);
  }
  return s;
}

describe("hub row scan (lib/jsonscan.ts)", () => {
  it("passes only changes the parsing check accepts, and passes the rows capture prints", () => {
    const seed = testSeed();
    const rnd = seeded(seed);
    const tables = new Map([[def.name, def]]);
    const txn = (c: ReturnType<typeof validChange>) => ({ originTxn: 1n, changes: [c] }) as unknown as Parameters<typeof checkTransaction>[0];
    let scannedValid = 0;
    let mutantsPassed = 0;
    for (let i = 0; i < 20_000; i++) {
      const c = validChange(rnd);
      assert.equal(parsedChangeError(c, def), null, `generated change is valid: ${JSON.stringify(c)}`);
      assert.equal(checkTransaction(txn(c), tables), null);
      const field = pick(rnd, ["key", "row", "prev"] as const);
      const m = { ...c, [field]: mutate(rnd, c[field]) };
      const parsed = parsedChangeError(m, def);
      const full = checkTransaction(txn(m), tables);
      if (parsed !== null) assert.notEqual(full, null, `seed ${seed}: the scan passed what parsing refuses (${parsed}): ${JSON.stringify(m)}`);
      else mutantsPassed++;
      scannedValid++;
    }
    assert.ok(mutantsPassed > 100 && mutantsPassed < scannedValid, `mutants both refused and accepted (${mutantsPassed} accepted)`);
  });

  it("accepts the rows capture prints without parsing them", () => {
    // Bound to the scan: a row the scan accepts is never parsed, so a
    // JSON.parse that throws proves which path ran.
    const parse = JSON.parse;
    JSON.parse = () => { throw new Error("parsed"); };
    try {
      const row = JSON.stringify({ id: 1, code: "a", qty: 2, price: 1.5, ok: true, doc: null, at: null });
      const t = { originTxn: 1n, changes: [{ table: def.name, op: Op.INSERT, key: "[1,\"a\"]", row, prev: "" }] } as unknown as Parameters<typeof checkTransaction>[0];
      assert.equal(checkTransaction(t, new Map([[def.name, def]])), null);
    } finally {
      JSON.parse = parse;
    }
  });

  it("leaves tables with array columns, and texts too long to scan, to the parser", () => {
    assert.equal(rowLooksValid('{"a":[1]}', rowShape([{ name: "a", kind: "array", nullable: true }])), false);
    assert.equal(rowLooksValid('{"a":1}', rowShape([{ name: "a", kind: "integer", nullable: true }])), true);
    const long = `{"s":"${"x\\n".repeat(2_000_000)}"}`;
    assert.equal(typeof rowLooksValid(long, rowShape([{ name: "s", kind: "string", nullable: true }])), "boolean");
    assert.equal(keyLooksValid("[1, \"a\"]", 2), true);
    assert.equal(keyLooksValid("[1]", 2), false);
  });
});
