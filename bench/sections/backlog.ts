/**
 * Section 7, an offline branch comes back: B's agent stopped, B's shop keeps
 * selling (a backlog of small local transactions), then B's agent starts
 * while A commits a small transaction every 20 ms. Rows/s from the agent's
 * spawn until A has all of B's backlog, at two backlog sizes: their ratio
 * shows whether catch-up stays linear in the backlog (every incoming batch
 * meets the whole backlog of local changes, which it must not re-read).
 */
import pg from "pg";
import type { BenchContext, SectionResult } from "../lib/context.ts";
import { startPair } from "../lib/pair.ts";
import { pairCpu, cpuDelta } from "../lib/pgcpu.ts";
import { waitUntil } from "../lib/poll.ts";
import { digest } from "../lib/pg.ts";
import { nowMs, sleep } from "../lib/stats.ts";

const B_BASE = 3_000_000_000;
const A_BASE = 4_000_000_000;
/** A's concurrent writes: one transaction of A_ROWS rows every A_EVERY_MS. */
const A_ROWS = 5;
const A_EVERY_MS = 20;

const insertSql = (lo: number, n: number, sku: string) =>
  `INSERT INTO public.items(id,sku,qty,price,note,updated_at) SELECT g,'${sku}',1,1.00,md5(g::text),clock_timestamp() FROM generate_series(${lo},${lo + n - 1}) g`;

export async function backlog(ctx: BenchContext): Promise<SectionResult> {
  const s = ctx.sizes;
  const res: SectionResult = { section: "backlog", command: ctx.command("backlog"), ok: true, tables: [], data: {}, errors: [] };
  const timeout = ctx.quick ? 60_000 : 600_000;
  ctx.log("backlog: setting up hub + 2 agents");
  const pair = await startPair(ctx, "bl", { baseRows: 0, sentTrigger: false });
  const a = new pg.Client({ connectionString: pair.a.url });
  const b = new pg.Client({ connectionString: pair.b.url });
  await a.connect();
  await b.connect();
  const rows: (string | number)[][] = [];
  const runs: Record<string, unknown>[] = [];
  let aNext = A_BASE;
  try {
    await pair.barrier(timeout);
    for (const [i, txns] of s.backlogTxns.entries()) {
      const n = txns * s.backlogRows;
      const lo = B_BASE + i * 100_000_000;
      await pair.stopB();
      for (let k = 0; k < txns; k++) await b.query(insertSql(lo + k * s.backlogRows, s.backlogRows, "offline"));
      let stop = false;
      let aTxns = 0;
      const writer = (async () => {
        while (!stop) {
          await a.query(insertSql(aNext, A_ROWS, "online"));
          aNext += A_ROWS;
          aTxns++;
          await sleep(A_EVERY_MS);
        }
      })();
      await sleep(200);
      const c0 = pairCpu(pair);
      const t0 = nowMs();
      pair.spawnB();
      const t1 = await waitUntil(pair.a.pool, `SELECT count(*) = ${n} FROM public.items WHERE id BETWEEN ${lo} AND ${lo + n - 1}`, timeout, 20);
      const c1 = pairCpu(pair);
      stop = true;
      await writer;
      await pair.barrier(timeout);
      const [da, db] = [await digest(pair.a.pool), await digest(pair.b.pool)];
      const check = da === db ? "OK" : "MISMATCH";
      if (check !== "OK") { res.ok = false; res.errors.push(`backlog ${txns}: A=${da} B=${db}`); }
      const e = (t1 - t0) / 1000;
      const cpu = cpuDelta(c0, c1);
      runs.push({ backlogTxns: txns, rows: n, catchUpS: e, rowsPerS: n / e, aTxnsMeanwhile: aTxns, cpuS: cpu, digest: da, check });
      rows.push([txns, n, aTxns, e.toFixed(2), Math.round(n / e), ...[cpu.hub, cpu.agentA, cpu.agentB, cpu.hubPg, cpu.aPg, cpu.bPg].map((x) => x.toFixed(2)), check]);
      ctx.log(`  backlog of ${txns} transactions (${n} rows): on A ${e.toFixed(2)} s after B's agent started = ${Math.round(n / e)} rows/s, ${aTxns} of A's transactions meanwhile ${check}`);
    }
  } catch (e) {
    res.ok = false;
    res.errors.push((e as Error).stack ?? String(e));
  } finally {
    await a.end().catch(() => undefined);
    await b.end().catch(() => undefined);
    await pair.close();
  }
  const notes = [
    `B's agent stopped; ${s.backlogRows}-row transactions committed on B (its backlog); B's agent spawned while A commits a ${A_ROWS}-row transaction every ${A_EVERY_MS} ms.`,
    "catch-up = spawn of B's agent → the last of B's backlog visible on A; then A's rows are checked on B (barrier) and the whole table compared.",
    "Linear catch-up shows as a steady rows/s across backlog sizes. Before agent/apply/localIndex.ts every batch from A made B read its whole backlog: 5,000 transactions took 9.8 s and 20,000 took 146 s (code 7622676).",
  ];
  if (runs.length >= 2) {
    const first = runs[0] as { rowsPerS: number };
    const last = runs.at(-1) as { rowsPerS: number };
    notes.push(`rows/s at the largest backlog is ${(last.rowsPerS / first.rowsPerS).toFixed(2)}× that at the smallest.`);
  }
  res.data = { runs };
  res.tables.push({
    title: "backlog: an offline branch comes back while another writes",
    header: ["backlog txns", "rows", "A txns meanwhile", "catch-up s", "rows/s", "hub CPU s", "agent A CPU s", "agent B CPU s", "hub PG CPU s", "A PG CPU s", "B PG CPU s", "check"],
    rows, notes,
  });
  return res;
}
