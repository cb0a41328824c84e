/**
 * The newest version of every row a tenant has synced (see
 * conflict/resolve.ts for what a version holds and why). Read and written
 * only inside a log append, under the tenant's head lock, so versions move
 * in sequence order.
 */
import type pg from "pg";
import type { RowVersion, RowOp, ColVersion } from "../conflict/resolve.ts";

export const rowId = (table: string, key: string) => `${table}\u0000${key}`;

export async function loadVersions(c: pg.ClientBase | pg.Pool, schema: string, ids: { table: string; key: string }[]): Promise<Map<string, RowVersion>> {
  const out = new Map<string, RowVersion>();
  if (ids.length === 0) return out;
  const { rows } = await c.query({
    name: `row-state-load-${schema}`,
    text: `SELECT s.tbl, s.key, s.op, s.seq::text AS seq, s.branch, s.exact, s.hlc::text AS hlc, s.cols, s.lost
             FROM ${schema}.row_versions($1::text[], $2::text[]) s`,
    values: [ids.map((i) => i.table), ids.map((i) => i.key)],
  });
  for (const r of rows) {
    out.set(rowId(r.tbl, r.key), {
      op: r.op as RowOp, seq: BigInt(r.seq), branch: r.branch, exact: r.exact, hlc: BigInt(r.hlc),
      cols: r.cols as Record<string, ColVersion> | null, lost: r.lost as Record<string, string> | null,
    });
  }
  return out;
}

/** SQL (a data-modifying CTE body) and parameters that upsert versions; at most one per row. */
export function versionsUpsert(schema: string, versions: Map<string, RowVersion>, firstParam: number): { sql: string; values: unknown[] } {
  const cols = { t: [] as string[], k: [] as string[], op: [] as string[], seq: [] as string[], b: [] as string[], ex: [] as boolean[], h: [] as string[], c: [] as (string | null)[], l: [] as (string | null)[] };
  for (const [id, v] of versions) {
    const at = id.indexOf("\u0000");
    cols.t.push(id.slice(0, at)); cols.k.push(id.slice(at + 1)); cols.op.push(v.op); cols.seq.push(v.seq.toString());
    cols.b.push(v.branch); cols.ex.push(v.exact); cols.h.push(v.hlc.toString()); cols.c.push(v.cols ? JSON.stringify(v.cols) : null);
    cols.l.push(v.lost ? JSON.stringify(v.lost) : null);
  }
  const p = (i: number) => `$${firstParam + i}`;
  return {
    sql: `INSERT INTO ${schema}.row_state(tbl, key, op, seq, branch, exact, hlc, cols, lost)
          SELECT * FROM unnest(${p(0)}::text[], ${p(1)}::text[], ${p(2)}::"char"[], ${p(3)}::bigint[], ${p(4)}::text[], ${p(5)}::bool[], ${p(6)}::bigint[], ${p(7)}::jsonb[], ${p(8)}::jsonb[])
          ON CONFLICT (tbl, key) DO UPDATE SET op = excluded.op, seq = excluded.seq, branch = excluded.branch,
            exact = excluded.exact, hlc = excluded.hlc, cols = excluded.cols, lost = excluded.lost`,
    values: [cols.t, cols.k, cols.op, cols.seq, cols.b, cols.ex, cols.h, cols.c, cols.l],
  };
}
