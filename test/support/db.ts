/** Test databases on the local PostgreSQL: each test makes and drops its own. */
import pg from "pg";
import { randomBytes } from "node:crypto";

export const PG_BASE = process.env.TEST_PG_URL ?? "postgresql://postgres@127.0.0.1:5432";

export interface TestDb { name: string; url: string; pool: pg.Pool; drop(): Promise<void> }

/** One client on database `name` of the test server (or the server at `base`), for `f`. */
export async function withDb<T>(name: string, f: (c: pg.Client) => Promise<T>, base = PG_BASE): Promise<T> {
  const c = new pg.Client({ connectionString: `${base}/${name}` });
  await c.connect();
  try { return await f(c); } finally { await c.end(); }
}

const admin = <T>(base: string, f: (c: pg.Client) => Promise<T>): Promise<T> => withDb("postgres", f, base);

/** A fresh database on the test server, or on the server at `base` (a throwaway cluster). */
export async function createDb(prefix: string, ddl = "", base = PG_BASE): Promise<TestDb> {
  const name = `bst_${prefix}_${randomBytes(4).toString("hex")}`;
  await admin(base, (c) => c.query(`CREATE DATABASE "${name}"`));
  const url = `${base}/${name}`;
  const pool = new pg.Pool({ connectionString: url, max: 4 });
  pool.on("error", () => undefined); // DROP ... WITH (FORCE) ends idle clients
  if (ddl) await pool.query(ddl);
  return {
    name, url, pool,
    async drop() {
      await pool.end().catch(() => undefined);
      await admin(base, (c) => c.query(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`));
    },
  };
}

export async function waitFor<T>(what: string, f: () => Promise<T | false | null | undefined>, timeoutMs = 10_000, everyMs = 25): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await f();
      if (v) return v;
    } catch (e) { last = e; }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${(last as Error).message}` : ""}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** count + md5 over a table's rows in key order: equal digests mean identical rows. */
export async function digest(pool: pg.Pool, table: string, key = "id"): Promise<string> {
  const { rows } = await pool.query(`SELECT count(*) AS n, md5(coalesce(string_agg(t::text, '|' ORDER BY ${key}), '')) AS h FROM ${table} t`);
  return `${rows[0].n}:${rows[0].h}`;
}

/**
 * Watches every query the clients of `pool` send from their first checkout
 * on: `sent` as each goes out (round trips), `returned` with its results.
 */
export function watchQueries(pool: pg.Pool, w: { sent?: () => void; returned?: (results: pg.QueryResult[]) => void }): void {
  const watched = new WeakSet<object>();
  pool.on("acquire", (client) => {
    if (watched.has(client)) return;
    watched.add(client);
    const query = client.query.bind(client) as (...a: unknown[]) => unknown;
    (client as unknown as { query: (...a: unknown[]) => unknown }).query = (...a: unknown[]) => {
      w.sent?.();
      const r = query(...a);
      if (w.returned && r instanceof Promise) {
        r.then((res) => w.returned!((Array.isArray(res) ? res : [res]) as pg.QueryResult[]), () => undefined);
      }
      return r;
    };
  });
}
