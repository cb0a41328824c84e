/**
 * Part of the throughput section: what change capture costs the writer. The
 * W1 inserts and then updates (100-row transactions, one client) into a
 * scratch database, once without and once with branchsync's capture
 * triggers installed (agent/capture/install.ts), no agent or hub running:
 * the A-side time of W1 is bounded by this.
 */
import pg from "pg";
import type { BenchContext } from "../lib/context.ts";
import { createDb } from "../lib/pg.ts";
import { ITEMS_DDL, w1Statement } from "../lib/items.ts";
import { runStatements } from "../lib/pair.ts";
import { introspect } from "../../agent/capture/introspect.ts";
import { installCapture } from "../../agent/capture/install.ts";

export interface CaptureRun { rows: number; plainS: number; capturedS: number; ratio: number; plainRowsPerS: number; capturedRowsPerS: number }
export interface CaptureCost extends CaptureRun { updates: CaptureRun; bulkAfterSingles: CaptureRun; singleRowTxns: CaptureRun }

/**
 * One UPDATE of `rows` rows in a new session whose first statements each
 * updated one row: a trigger's cached plan is made for those (the capture
 * used to pair a bulk update's rows in quadratic time then).
 */
async function bulkAfterSingles(url: string, base: number, rows: number): Promise<number> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    for (let i = 1; i <= 6; i++) await c.query(`UPDATE public.items SET qty = qty + 1 WHERE id = ${base + i}`);
    const t0 = performance.now();
    await c.query(`UPDATE public.items SET qty = qty + 1, updated_at = clock_timestamp() WHERE id BETWEEN ${base + 1} AND ${base + rows}`);
    return (performance.now() - t0) / 1000;
  } finally {
    await c.end();
  }
}

async function w1Run(c: pg.Client, kind: "insert" | "update", base: number, rows: number, batch: number): Promise<number> {
  const stmts: string[] = [];
  for (let a = base + 1; a <= base + rows; a += batch) stmts.push(w1Statement(kind, a, Math.min(a + batch - 1, base + rows)));
  await c.query("CHECKPOINT");
  const t = await runStatements(c, ["SELECT 1", ...stmts]);
  return (t.t1 - t.t0) / 1000;
}

/**
 * Single-row update transactions without waiting for the WAL flush: capture
 * costs CPU, and the flush (0.1-0.3 ms here, swinging) would bury it.
 */
async function singleRowRun(c: pg.Client, base: number, n: number): Promise<number> {
  await c.query("SET synchronous_commit = off");
  try {
    return await w1Run(c, "update", base, n, 1);
  } finally {
    await c.query("RESET synchronous_commit");
  }
}

export async function captureCost(ctx: BenchContext): Promise<CaptureCost> {
  const s = ctx.sizes;
  // A till's sale: one row per transaction, where capture's cost per
  // statement, not per row, is what the writer pays.
  const singles = Math.max(1, Math.floor(s.updates / 4));
  const db = await createDb(ctx.server, "cap", ctx.tag, ITEMS_DDL);
  const c = new pg.Client({ connectionString: db.url });
  await c.connect();
  try {
    const plainS = await w1Run(c, "insert", 1_000_000_000, s.inserts, s.batch);
    const plainUpdS = await w1Run(c, "update", 1_000_000_000, s.updates, s.batch);
    const plainBulkS = await bulkAfterSingles(db.url, 1_000_000_000, s.updates);
    const plainOneS = await singleRowRun(c, 1_000_000_000, singles);
    await installCapture(c, [await introspect(c, "public.items")], `cap_${ctx.tag}`.slice(0, 30), "a");
    const capturedS = await w1Run(c, "insert", 2_000_000_000, s.inserts, s.batch);
    const capturedUpdS = await w1Run(c, "update", 2_000_000_000, s.updates, s.batch);
    const capturedBulkS = await bulkAfterSingles(db.url, 2_000_000_000, s.updates);
    const capturedOneS = await singleRowRun(c, 2_000_000_000, singles);
    const run = (rows: number, p: number, cap: number): CaptureRun => ({ rows, plainS: p, capturedS: cap, ratio: cap / p, plainRowsPerS: rows / p, capturedRowsPerS: rows / cap });
    return { ...run(s.inserts, plainS, capturedS), updates: run(s.updates, plainUpdS, capturedUpdS), bulkAfterSingles: run(s.updates, plainBulkS, capturedBulkS),
      singleRowTxns: run(singles, plainOneS, capturedOneS) };
  } finally {
    await c.end();
  }
}
