/**
 * Reads a tracked table's shape from the branch's catalog. A table without a
 * primary key is refused by name: rows are matched by key at every branch.
 */
import type pg from "pg";

export interface LocalTable {
  /** "schema.table" */
  name: string;
  schema: string;
  table: string;
  columns: { name: string; type: string; nullable: boolean }[];
  primaryKey: string[];
}

export class SchemaError extends Error {}

export async function introspect(db: pg.ClientBase, name: string): Promise<LocalTable> {
  const [schema, table] = name.split(".");
  const rel = await db.query(
    `SELECT c.oid, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2`,
    [schema, table]);
  if (rel.rows.length === 0) throw new SchemaError(`tracked table ${name} does not exist in the branch database`);
  if (!["r", "p"].includes(rel.rows[0].relkind)) throw new SchemaError(`tracked table ${name} is not a plain table`);
  const oid = rel.rows[0].oid;
  const cols = await db.query(
    `SELECT attname, format_type(atttypid, atttypmod) AS type, NOT attnotnull AS nullable, attgenerated <> '' AS generated
       FROM pg_attribute WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum`, [oid]);
  const gen = cols.rows.find((c) => c.generated);
  if (gen) throw new SchemaError(`table ${name}: generated column "${gen.attname}" is not supported; compute it at each branch with a trigger instead`);
  const bad = cols.rows.find((c) => !/^[a-z_][a-z0-9_$]{0,62}$/.test(c.attname));
  if (bad) throw new SchemaError(`table ${name}: column name "${bad.attname}" must be a lowercase identifier`);
  const pk = await db.query(
    `SELECT a.attname FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
       JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
      WHERE i.indrelid = $1 AND i.indisprimary ORDER BY k.ord`, [oid]);
  if (pk.rows.length === 0) {
    throw new SchemaError(`table ${name} has no primary key; add one (ALTER TABLE ${name} ADD PRIMARY KEY (...)) — branchsync matches rows by primary key`);
  }
  return {
    name, schema, table,
    columns: cols.rows.map((c) => ({ name: c.attname, type: c.type, nullable: c.nullable })),
    primaryKey: pk.rows.map((r) => r.attname),
  };
}
