/**
 * Checks an agent's ChangeBatch against the tenant's table registry before
 * anything is stored. A bad transaction is rejected on its own (with a
 * message naming the table/column); it never reaches the log.
 */
import { Op, type Change, type ChangeBatch, type Transaction } from "../../gen/branchsync/v1/sync_pb.ts";
import type { TableDef } from "../store/tables.ts";
import type { DecodedTxn, WireChange } from "../../lib/protowire.ts";
import { rowLooksValid, keyLooksValid, prevLooksValid, rowShape, prevShape, type RowShape, type ValueKind } from "../../lib/jsonscan.ts";

type Kind = ValueKind;

/** What JSON kind to_jsonb produces for a PostgreSQL type. */
export function jsonKindOf(pgType: string): Kind {
  if (pgType.endsWith("[]")) return "array";
  const t = pgType.replace(/\(.*\)/, "").trim();
  if (["smallint", "integer", "bigint"].includes(t)) return "integer";
  if (["numeric", "real", "double precision"].includes(t)) return "number";
  if (t === "boolean") return "boolean";
  // json/jsonb travel as strings of their text (SQL NULL stays null).
  return "string";
}

function kindMatches(kind: Kind, v: unknown): boolean {
  if (v === null) return true;
  switch (kind) {
    // NaN and ±Infinity of numeric/float travel as strings.
    case "number": return typeof v === "number" || (typeof v === "string" && /^(NaN|-?Infinity)$/.test(v));
    case "integer": return typeof v === "number" && Number.isInteger(v);
    case "string": return typeof v === "string";
    case "boolean": return typeof v === "boolean";
    case "array": return Array.isArray(v);
  }
}

interface Compiled {
  cols: Map<string, { kind: Kind; nullable: boolean; type: string }>;
  names: string[];
  shape: RowShape;
  /** What an update's prev may look like (it names non-key columns). */
  prevShape: RegExp;
}
const compiledDefs = new WeakMap<TableDef, Compiled>();

/** Column kinds per table, worked out once rather than per change. */
function compiled(def: TableDef): Compiled {
  let c = compiledDefs.get(def);
  if (!c) {
    const pk = new Set(def.primaryKey);
    c = {
      cols: new Map(def.columns.map((col) => [col.name, { kind: jsonKindOf(col.type), nullable: col.nullable, type: col.type }])),
      names: def.columns.map((col) => col.name),
      shape: rowShape(def.columns.map((col) => ({ name: col.name, kind: jsonKindOf(col.type), nullable: col.nullable && !pk.has(col.name) }))),
      prevShape: prevShape(def.columns.filter((col) => !pk.has(col.name)).map((col) => col.name)),
    };
    compiledDefs.set(def, c);
  }
  return c;
}

const where = (t: Transaction, i: number) => `transaction ${t.originTxn} change ${i}`;

export function checkTransaction(t: Transaction, tables: Map<string, TableDef>): string | null {
  if (t.originTxn === 0n) return "origin_txn must be set";
  if (t.changes.length === 0) return `transaction ${t.originTxn} has no changes`;
  if ((t as Partial<DecodedTxn>).originBranchNotUtf8) return `transaction ${t.originTxn}: origin_branch is not valid UTF-8 (leave it empty: the hub sets it)`;
  for (let i = 0; i < t.changes.length; i++) {
    const c = t.changes[i];
    // Stored as received and sent on to every branch, whose protobuf
    // decoders may refuse a string that is not UTF-8 (Go's do).
    const notUtf8 = (c as WireChange).notUtf8;
    if (notUtf8) return `${where(t, i)}: ${notUtf8} is not valid UTF-8`;
    const def = tables.get(c.table);
    if (!def) return `${where(t, i)}: table "${c.table}" was not declared in Hello`;
    if (c.op !== Op.INSERT && c.op !== Op.UPDATE && c.op !== Op.DELETE) return `${where(t, i)}: op must be INSERT, UPDATE or DELETE`;
    const { shape, prevShape } = compiled(def);
    const prev = c.prev ?? "";
    // Rows as capture prints them pass a scan that builds nothing; anything
    // else is parsed, which also words the error.
    if (keyLooksValid(c.key, def.primaryKey.length) && rowLooksValid(c.row, shape) &&
        (prev === "" || (c.op === Op.UPDATE && prevLooksValid(prev, prevShape)))) continue;
    const err = parsedChangeError(c, def);
    if (err) return `${where(t, i)}: ${err}`;
  }
  return null;
}

/** What is wrong with a change's key, row and prev, found by parsing them (null: nothing). */
export function parsedChangeError(c: Pick<Change, "table" | "op" | "key" | "row" | "prev">, def: TableDef): string | null {
  let key: unknown;
  let row: unknown;
  try { key = JSON.parse(c.key); } catch { return "key is not JSON"; }
  if (!Array.isArray(key) || key.length !== def.primaryKey.length) {
    return `key must be a JSON array of ${def.primaryKey.length} value(s) (${def.primaryKey.join(", ")})`;
  }
  try { row = JSON.parse(c.row); } catch { return "row is not JSON"; }
  if (row === null || typeof row !== "object" || Array.isArray(row)) return "row must be a JSON object";
  const obj = row as Record<string, unknown>;
  const { cols, names } = compiled(def);
  let present = 0;
  for (const k in obj) {
    const col = cols.get(k);
    if (!col) return `table ${c.table} has no column "${k}"`;
    const v = obj[k];
    if (v === null && !col.nullable) return `column "${k}" is NOT NULL but the row has null`;
    if (!kindMatches(col.kind, v)) return `column "${k}" (${col.type}) has a value of the wrong type`;
    present++;
  }
  if (present !== names.length) {
    const missing = names.find((n) => !(n in obj));
    return `row lacks column "${missing}" (rows travel as full images)`;
  }
  for (const k of def.primaryKey) {
    if (obj[k] === null) return `primary key column "${k}" is null`;
  }
  return c.prev ? checkPrev(c.prev, c.op, cols, def.primaryKey) : null;
}

function checkPrev(prev: string, op: Op, cols: Map<string, unknown>, pk: string[]): string | null {
  if (op !== Op.UPDATE) return "prev is only for updates";
  let p: unknown;
  try { p = JSON.parse(prev); } catch { return "prev is not JSON"; }
  if (p === null || typeof p !== "object" || Array.isArray(p)) return "prev must be a JSON object";
  for (const [k, v] of Object.entries(p)) {
    if (!cols.has(k) || pk.includes(k)) return `prev names "${k}", which is not a non-key column`;
    if (!Array.isArray(v) || v.length !== 1) return `prev of "${k}" must be a one-element array holding the old value`;
  }
  return null;
}

export function batchSize(b: ChangeBatch): number {
  let n = 0;
  for (const t of b.transactions) n += t.changes.length;
  return n;
}
