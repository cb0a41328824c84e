/**
 * What one apply of a small batch costs a receiving branch, in one process:
 * the real applier (agent/apply/applier.ts) on a scratch database with
 * capture installed, N batches of R inserted rows one after another, with a
 * given synchronous_commit; per batch the wall time, its backend's CPU (from
 * /proc) and this process's CPU. Fan-out applies one small batch at 50
 * branches per change, so this is its unit of work.
 *
 *   node --import tsx bench/apply-micro.ts [rows per batch=1] [batches=3000] [synchronous_commit=off]
 *
 * Uses BENCH_PG_URL (default postgresql://postgres@127.0.0.1:5432); the
 * database is dropped at the end.
 */
import { randomBytes } from "node:crypto";
import pg from "pg";
import { create } from "@bufbuild/protobuf";
import { introspect } from "../agent/capture/introspect.ts";
import { installCapture } from "../agent/capture/install.ts";
import { makeApplier } from "../agent/apply/applier.ts";
import { makePool } from "../lib/pgpool.ts";
import { ChangeBatchSchema, TransactionSchema, ChangeSchema, Op } from "../gen/branchsync/v1/sync_pb.ts";
import { ITEMS_DDL } from "./lib/items.ts";
import { readCpuSeconds } from "./lib/procs.ts";

const rows = Number(process.argv[2] ?? 1);
const n = Number(process.argv[3] ?? 3000);
const synchronousCommit = process.argv[4] ?? "off";
const base = (process.env.BENCH_PG_URL ?? "postgresql://postgres@127.0.0.1:5432").replace(/\/+$/, "");
const name = `bsbench_apply_${randomBytes(4).toString("hex")}`;

let seq = 0n;
let id = 0;
const row = (k: number) => JSON.stringify({ id: k, sku: `sku${k}`, qty: 1, price: 2.5, note: "probe", updated_at: "2026-01-01T00:00:00+00:00" });
function nextBatch() {
  seq++;
  return create(ChangeBatchSchema, {
    cursorAfter: seq,
    transactions: [create(TransactionSchema, {
      seq, originBranch: "other", originTxn: seq + 1000n, chunkIndex: 0, lastChunk: true,
      changes: Array.from({ length: rows }, () => { id++; return create(ChangeSchema, { table: "public.items", op: Op.INSERT, key: `[${id}]`, row: row(id) }); }),
    })],
  });
}

async function admin(sql: string) {
  const c = new pg.Client({ connectionString: `${base}/postgres` });
  await c.connect();
  try { await c.query(sql); } finally { await c.end(); }
}

await admin(`CREATE DATABASE "${name}"`);
const pool = makePool(`${base}/${name}`, 1);
try {
  await pool.query(ITEMS_DDL);
  const c = await pool.connect();
  try { await installCapture(c, [await introspect(c, "public.items")], "t", "b"); } finally { c.release(); }
  const applier = makeApplier(pool, [await introspect(pool as unknown as pg.ClientBase, "public.items")], { synchronousCommit });
  // Past plpgsql's first compiles and plan choices.
  for (let i = 0; i < 200; i++) await applier.apply(nextBatch());
  const pid = (await pool.query("SELECT pg_backend_pid() AS p")).rows[0].p;
  const backendUs = () => (readCpuSeconds(pid) ?? NaN) * 1e6;
  const b0 = backendUs();
  const n0 = process.cpuUsage();
  const t0 = performance.now();
  for (let i = 0; i < n; i++) await applier.apply(nextBatch());
  const wallUs = (performance.now() - t0) * 1000;
  const nodeCpu = process.cpuUsage(n0);
  const b1 = backendUs();
  console.log(`| rows per batch | batches | synchronous_commit | wall µs per batch | backend CPU µs | this process CPU µs |`);
  console.log(`|---|---|---|---|---|---|`);
  console.log(`| ${rows} | ${n} | ${synchronousCommit} | ${(wallUs / n).toFixed(0)} | ${((b1 - b0) / n).toFixed(0)} | ${((nodeCpu.user + nodeCpu.system) / n).toFixed(0)} |`);
  console.log("(this process's CPU includes building each batch)");
} finally {
  await pool.end();
  await admin(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`);
}
