/**
 * Where the bench's databases live. By default the local PostgreSQL at
 * 127.0.0.1:5432 (BENCH_PG_URL overrides it); a section that needs more
 * connections than that server has free (50 agents), or `--pg private`,
 * gets a temporary cluster of its own (pg_createcluster, configured like the
 * anchors' clusters). Every database is named bsbench_*, and every database
 * and cluster is dropped at the end, also on failure.
 */
import pg from "pg";
import net from "node:net";
import fs from "node:fs";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { onCleanup } from "./cleanup.ts";
import { readCpuSeconds } from "./procs.ts";
import { makePool } from "../../lib/pgpool.ts";

const run = promisify(execFile);

export interface PgServer {
  kind: "main" | "private";
  host: string;
  port: number;
  url(db: string): string;
  /** track_commit_timestamp is on: probes can use A's commit timestamps. */
  commitTimestamps: boolean;
  maxConnections: number;
  describe: string;
}

async function withClient<T>(url: string, f: (c: pg.Client) => Promise<T>): Promise<T> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try { return await f(c); } finally { await c.end(); }
}

async function describeServer(kind: PgServer["kind"], base: string, label: string): Promise<PgServer> {
  const u = new URL(base);
  const { ts, maxc } = await withClient(`${base}/postgres`, async (c) => {
    const r = await c.query("SELECT current_setting('track_commit_timestamp') AS ts, current_setting('max_connections')::int AS maxc");
    return r.rows[0] as { ts: string; maxc: number };
  });
  return {
    kind, host: u.hostname, port: Number(u.port || 5432), url: (db) => `${base}/${db}`,
    commitTimestamps: ts === "on", maxConnections: maxc,
    describe: `${label} (${u.hostname}:${u.port || 5432}, max_connections=${maxc}, track_commit_timestamp=${ts})`,
  };
}

export function mainServer(): Promise<PgServer> {
  const base = (process.env.BENCH_PG_URL ?? "postgresql://postgres@127.0.0.1:5432").replace(/\/+$/, "");
  return describeServer("main", base, "local PostgreSQL");
}

/** Connections the server can still give us (it also serves other users' tests). */
export async function freeConnections(s: PgServer): Promise<number> {
  const used = await withClient(s.url("postgres"), async (c) => Number((await c.query("SELECT count(*) AS n FROM pg_stat_activity")).rows[0].n));
  return s.maxConnections - used;
}

async function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.once("error", () => resolve(false));
    srv.listen(port, "127.0.0.1", () => srv.close(() => resolve(true)));
  });
}

/** A throwaway PostgreSQL 15 cluster (root + pg_createcluster), dropped at cleanup. */
export async function privateCluster(tag: string, maxConnections: number, extraConf: string[] = []): Promise<PgServer> {
  const name = `bsbench_${tag}`;
  const { stdout } = await run("pg_lsclusters", ["-h"]);
  const used = new Set(stdout.split("\n").map((l) => l.split(/\s+/)[2]).filter(Boolean));
  let port = 5460;
  while (used.has(String(port)) || !(await portFree(port))) port++;
  await run("pg_createcluster", ["15", name, "-p", String(port), "--", "-A", "trust"]);
  const drop = async () => {
    await run("pg_ctlcluster", ["--skip-systemctl-redirect", "15", name, "stop", "-m", "fast"]).catch(() => undefined);
    await run("pg_dropcluster", ["15", name]).catch(() => undefined);
  };
  onCleanup(`cluster ${name}`, drop);
  const conf = `/etc/postgresql/15/${name}/conf.d/zz-bsbench.conf`;
  fs.writeFileSync(conf, [
    "# written by branchsync bench/lib/pg.ts; the cluster is dropped when the bench ends",
    "listen_addresses = '127.0.0.1'",
    `max_connections = ${maxConnections}`,
    "track_commit_timestamp = on",
    "shared_buffers = 256MB",
    "max_wal_size = 4GB",
    "checkpoint_timeout = 30min",
    "log_min_messages = warning",
    ...extraConf,
    "",
  ].join("\n"));
  await run("chown", ["postgres:postgres", conf]);
  await run("pg_ctlcluster", ["--skip-systemctl-redirect", "15", name, "start"]);
  const base = `postgresql://postgres@127.0.0.1:${port}`;
  for (let i = 0; ; i++) {
    try { return await describeServer("private", base, `private cluster 15/${name}`); } catch (e) {
      if (i > 50) throw e;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

export interface BenchDb { name: string; url: string; pool: pg.Pool }

/** A fresh bsbench_<label>_<tag> database; dropped (WITH FORCE) at cleanup. */
export async function createDb(s: PgServer, label: string, tag: string, ddl = ""): Promise<BenchDb> {
  const name = `bsbench_${label}_${tag}`;
  if (!/^bsbench_[a-z0-9_]{1,50}$/.test(name)) throw new Error(`bad database name ${name}`);
  await withClient(s.url("postgres"), (c) => c.query(`CREATE DATABASE "${name}"`));
  const pool = makePool(s.url(name), 3); // closed at cleanup, not by an idle timer mid-measurement
  pool.on("error", () => undefined);
  onCleanup(`database ${name}`, async () => {
    await pool.end().catch(() => undefined);
    await withClient(s.url("postgres"), (c) => c.query(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`));
  });
  if (ddl) await pool.query(ddl);
  return { name, url: s.url(name), pool };
}

/** count + md5 over the rows in id order (A and B equal ⇔ identical rows). */
export async function digest(db: pg.Pool | pg.Client, lo = "0", hi = "9223372036854775807"): Promise<string> {
  const { rows } = await db.query(
    `SELECT count(*) AS n, md5(coalesce(string_agg(t::text, '|' ORDER BY t.id), '')) AS h
       FROM public.items t WHERE t.id BETWEEN $1 AND $2`, [lo, hi]);
  return `${rows[0].n}:${rows[0].h}`;
}

export async function checkpoint(pool: pg.Pool): Promise<void> {
  await pool.query("CHECKPOINT");
}

/**
 * CHECKPOINT on the whole server: a section then starts without the dirty
 * buffers the one before left, whose writes would land in its measurement.
 */
export async function checkpointServer(s: PgServer): Promise<void> {
  await withClient(s.url("postgres"), (c) => c.query("CHECKPOINT"));
}

/** CPU seconds used so far by the server backends currently connected to `db` (pool connections are long-lived). */
export async function backendCpuSeconds(c: pg.Client, db: string): Promise<Map<number, number>> {
  const { rows } = await c.query("SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", [db]);
  const out = new Map<number, number>();
  for (const r of rows) { const s = readCpuSeconds(Number(r.pid)); if (s !== null) out.set(Number(r.pid), s); }
  return out;
}

/** CPU seconds the backends of `after` used since `before` (backends new in `after` count from 0). */
export function cpuDelta(before: Map<number, number>, after: Map<number, number>): number {
  let s = 0;
  for (const [pid, t] of after) s += t - (before.get(pid) ?? 0);
  return s;
}
