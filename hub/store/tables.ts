/**
 * The tenant's registry of tracked tables. The first branch to declare a
 * table registers its shape; every other branch must declare the same shape,
 * because rows travel as full images and are applied column by column.
 */
import type pg from "pg";
import { isIdent, isQualified } from "../../lib/ident.ts";
import { StatusError, Status } from "../errors.ts";

export interface TableDef {
  name: string;
  columns: { name: string; type: string; nullable: boolean }[];
  primaryKey: string[];
}

export function validateDef(t: TableDef): void {
  if (!isQualified(t.name)) {
    throw new StatusError(Status.INVALID_ARGUMENT, `table name "${t.name}" must be schema-qualified lowercase identifiers, e.g. public.items`);
  }
  if (t.columns.length === 0) throw new StatusError(Status.INVALID_ARGUMENT, `table ${t.name} declares no columns`);
  const names = new Set<string>();
  for (const c of t.columns) {
    if (!isIdent(c.name)) throw new StatusError(Status.INVALID_ARGUMENT, `table ${t.name}: invalid column name "${c.name}"`);
    if (names.has(c.name)) throw new StatusError(Status.INVALID_ARGUMENT, `table ${t.name}: column "${c.name}" declared twice`);
    if (!c.type || c.type.length > 128) throw new StatusError(Status.INVALID_ARGUMENT, `table ${t.name}: column "${c.name}" has no valid type`);
    names.add(c.name);
  }
  if (t.primaryKey.length === 0) {
    throw new StatusError(Status.FAILED_PRECONDITION, `table ${t.name} has no primary key; add one (branchsync matches rows by primary key)`);
  }
  for (const k of t.primaryKey) {
    if (!names.has(k)) throw new StatusError(Status.INVALID_ARGUMENT, `table ${t.name}: primary key column "${k}" is not a column`);
  }
}

function describeDiff(a: TableDef, b: TableDef): string | null {
  const fmt = (d: TableDef) => d.columns.map((c) => `${c.name} ${c.type}${c.nullable ? "" : " not null"}`).join(", ");
  if (fmt(a) !== fmt(b)) return `columns (${fmt(b)}) differ from the registered (${fmt(a)})`;
  if (a.primaryKey.join(",") !== b.primaryKey.join(",")) {
    return `primary key (${b.primaryKey.join(", ")}) differs from the registered (${a.primaryKey.join(", ")})`;
  }
  return null;
}

// Registered shapes never change, so a replica remembers what it has read:
// a reconnect storm of ten thousand agents then costs no registry queries.
const knownByPool = new WeakMap<pg.Pool, Map<string, TableDef>>();

/** Registers or checks every declared table; returns the registry for them. */
export async function registerTables(pool: pg.Pool, schema: string, branch: string, defs: TableDef[]): Promise<Map<string, TableDef>> {
  const out = new Map<string, TableDef>();
  let known = knownByPool.get(pool);
  if (!known) { known = new Map(); knownByPool.set(pool, known); }
  for (const d of defs) {
    validateDef(d);
    if (out.has(d.name)) throw new StatusError(Status.INVALID_ARGUMENT, `table ${d.name} declared twice`);
    const cached = known.get(`${schema}.${d.name}`);
    if (cached) {
      const diff = describeDiff(cached, d);
      if (diff) throw new StatusError(Status.FAILED_PRECONDITION, `table ${d.name}: ${diff}; make the branch's table match`);
      out.set(d.name, cached);
      continue;
    }
    await pool.query(
      `INSERT INTO ${schema}.tables(name, definition, registered_by) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING`,
      [d.name, JSON.stringify(d), branch]);
    const { rows } = await pool.query(`SELECT definition FROM ${schema}.tables WHERE name = $1`, [d.name]);
    const registered = rows[0].definition as TableDef;
    const diff = describeDiff(registered, d);
    if (diff) throw new StatusError(Status.FAILED_PRECONDITION, `table ${d.name}: ${diff}; make the branch's table match`);
    known.set(`${schema}.${d.name}`, registered);
    out.set(d.name, registered);
  }
  return out;
}
