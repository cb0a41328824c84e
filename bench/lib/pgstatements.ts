/**
 * `--pg-statements`: where PostgreSQL's own time goes, per section. The
 * private cluster then loads pg_stat_statements with track = all, so the
 * statements inside the hub's and the applier's plpgsql functions are
 * counted too (nested time is also in their caller's row). Reset before a
 * section, read after it, before its databases are dropped.
 */
import pg from "pg";
import type { PgServer } from "./pg.ts";
import { formatTable } from "./report.ts";

export const STATEMENTS_CONF = ["shared_preload_libraries = 'pg_stat_statements'", "pg_stat_statements.track = all", "pg_stat_statements.max = 2000"];

export interface StatementRow { db: string; calls: number; totalMs: number; meanUs: number; rows: number; jitMs: number; query: string }

async function withPostgres<T>(s: PgServer, f: (c: pg.Client) => Promise<T>): Promise<T> {
  const c = new pg.Client({ connectionString: s.url("postgres") });
  await c.connect();
  try { return await f(c); } finally { await c.end(); }
}

export async function resetStatements(s: PgServer): Promise<void> {
  await withPostgres(s, async (c) => {
    await c.query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements");
    await c.query("SELECT pg_stat_statements_reset()");
  });
}

/** The `limit` statements with the most execution time since the reset, per database label. */
export async function topStatements(s: PgServer, limit = 30): Promise<StatementRow[]> {
  return withPostgres(s, async (c) => {
    const { rows } = await c.query(
      `SELECT coalesce(d.datname, s.dbid::text) AS db, s.calls::int AS calls, s.total_exec_time AS total, s.rows::bigint AS rows,
              s.jit_generation_time + s.jit_inlining_time + s.jit_optimization_time + s.jit_emission_time AS jit,
              regexp_replace(s.query, '\\s+', ' ', 'g') AS query
         FROM pg_stat_statements s LEFT JOIN pg_database d ON d.oid = s.dbid
        WHERE s.query NOT LIKE '%pg_stat_statements%'
        ORDER BY s.total_exec_time DESC LIMIT $1`, [limit]);
    return rows.map((r) => ({
      db: String(r.db).replace(/^bsbench_/, "").replace(/_[a-z0-9]+$/, ""), calls: r.calls, totalMs: r.total,
      meanUs: r.calls ? (r.total * 1000) / r.calls : 0, rows: Number(r.rows), jitMs: Number(r.jit), query: r.query.slice(0, 110),
    }));
  });
}

export function formatStatements(section: string, rows: StatementRow[]): string {
  return `\n## ${section}: PostgreSQL statements by execution time (pg_stat_statements, nested included)\n` + formatTable(
    ["db", "calls", "total ms", "mean µs", "rows", "JIT ms", "query"],
    rows.map((r) => [r.db, r.calls, r.totalMs.toFixed(0), r.meanUs.toFixed(0), r.rows, r.jitMs.toFixed(0), r.query]));
}
