/**
 * Section 1, throughput A → B with the anchors' W1: inserts, then updates,
 * then deletes, in 100-row transactions from one client on A; rows/s from
 * the first commit on A to the last change visible on B (polled every 5 ms).
 * Then the drain: B's agent stopped, the inserts written, B's agent started;
 * rows/s from its start until all are visible on B.
 */
import pg from "pg";
import type { BenchContext, SectionResult } from "../lib/context.ts";
import { startPair, runStatements, type Pair } from "../lib/pair.ts";
import { pairCpu, pairFaults, cpuDelta } from "../lib/pgcpu.ts";
import { w1Statement, phaseBounds, type Phase } from "../lib/items.ts";
import { waitUntil } from "../lib/poll.ts";
import { digest, checkpoint } from "../lib/pg.ts";
import { nowMs, sleep } from "../lib/stats.ts";
import { captureCost, type CaptureCost } from "./capture.ts";

const WARMUP_BASE = 700_000_000_000;

function statements(kind: Phase, lo: number, hi: number, batch: number): string[] {
  const out: string[] = [];
  for (let a = lo; a <= hi; a += batch) out.push(w1Statement(kind, a, Math.min(a + batch - 1, hi)));
  return out;
}

const cpu = pairCpu;
/** The six processes' CPU seconds, then their sum per row in µs (what two codes compare by: rows/s swings with the machine). */
const cpuCells = (c: ReturnType<typeof cpuDelta>, rows: number) => {
  const parts = [c.hub, c.agentA, c.agentB, c.hubPg, c.aPg, c.bPg];
  return [...parts.map((x) => x.toFixed(2)), ((parts.reduce((a, b) => a + b, 0) / rows) * 1e6).toFixed(1)];
};
const faultsPerRow = (f: ReturnType<typeof cpuDelta>, rows: number) => (Object.values(f).reduce((a, b) => a + b, 0) / rows).toFixed(2);

export async function throughput(ctx: BenchContext): Promise<SectionResult> {
  const s = ctx.sizes;
  const res: SectionResult = { section: "throughput", command: ctx.command("throughput"), ok: true, tables: [], data: {}, errors: [] };
  const timeout = ctx.quick ? 60_000 : 300_000;
  ctx.log(`throughput: setting up hub + 2 agents, ${s.baseRows} base rows`);
  const pair = await startPair(ctx, "tp", { baseRows: s.baseRows, sentTrigger: false });
  const writer = new pg.Client({ connectionString: pair.a.url });
  const poller = new pg.Client({ connectionString: pair.b.url });
  await writer.connect();
  await poller.connect();
  const rows: (string | number)[][] = [];
  const notes = [
    `W1: ${s.batch}-row transactions from one client on A (same SQL as anchors lib.sh); e2e = first commit on A → last change visible on B (B polled every 5 ms); catch-up = after A's last commit.`,
    "digests (count + md5 over rows in id order) of each phase's id range compared on A and B.",
    "PG CPU s = CPU time of the PostgreSQL backends connected to that database over the phase (from /proc); A's includes the writer's own backend with its capture triggers. Less noisy than rows/s on a shared machine: compare these between runs.",
    "six faults/row = page faults of the same six processes per row (/proc minflt + majflt): on this VM kind a fault on a fresh page costs ~12 µs of CPU.",
    "all six CPU µs/row = the six columns before it per row written. The machine's speed moves it too: to compare two codes, alternate their runs, or divide by agent A's CPU, whose work they rarely change (session 10: hub 1.66× → 1.15× agent A's).",
  ];
  const phases: Record<string, unknown>[] = [];
  const settle = async () => {
    await pair.barrier(timeout);
    await checkpoint(pair.a.pool);
    await sleep(ctx.quick ? 200 : 1000);
  };
  try {
    await pair.barrier(timeout);
    // Every path of the measured phases once, until V8 has compiled what
    // they run: with 2,000 inserts alone, the hub and agents were still
    // spending about 2.5 s of CPU in TurboFan (--trace-opt) during the
    // phases, 5-9 % of the machine, a start-up cost a running hub has paid.
    for (const kind of ["insert", "update", "delete"] as Phase[]) {
      await runStatements(writer, statements(kind, WARMUP_BASE + 1, WARMUP_BASE + s.warmupRows, s.batch));
    }
    await pair.barrier(timeout);

    const base = 1_000_000_000;
    for (const kind of ["insert", "update", "delete"] as Phase[]) {
      const { lo, hi, done } = phaseBounds(kind, base, s.inserts, s.updates, s.deletes);
      const n = hi - lo + 1;
      const stmts = statements(kind, lo, hi, s.batch);
      await settle();
      const c0 = cpu(pair);
      const f0 = pairFaults(pair);
      const m0 = await hubCounters(pair.hub.httpPort);
      const seen = waitUntil(poller, done, timeout);
      seen.catch(() => undefined);
      await sleep(200);
      const { t0, t1 } = await runStatements(writer, stmts);
      const t2 = await seen;
      const c1 = cpu(pair);
      const f1 = pairFaults(pair);
      const m1 = await hubCounters(pair.hub.httpPort);
      const perBatch = (m1.changes - m0.changes) / Math.max(1, m1.batches - m0.batches);
      const [da, db] = [await digest(pair.a.pool, String(lo), String(hi)), await digest(pair.b.pool, String(lo), String(hi))];
      const check = da === db ? "OK" : "MISMATCH";
      if (check !== "OK") { res.ok = false; res.errors.push(`${kind}: digest A=${da} B=${db}`); }
      const e2e = (t2 - t0) / 1000;
      const p = { kind, rows: n, e2eS: e2e, rowsPerS: n / e2e, aSideS: (t1 - t0) / 1000, catchupS: (t2 - t1) / 1000,
        cpuS: cpuDelta(c0, c1), faults: cpuDelta(f0, f1), changesPerBatch: perBatch, digestA: da, digestB: db, check };
      phases.push(p);
      rows.push([`W1 ${kind}`, n, e2e.toFixed(3), Math.round(n / e2e), p.aSideS.toFixed(3), p.catchupS.toFixed(3), ...cpuCells(p.cpuS, n), faultsPerRow(p.faults, n), check]);
      ctx.log(`  W1 ${kind}: ${n} rows in ${e2e.toFixed(2)} s = ${Math.round(n / e2e)} rows/s (catch-up ${p.catchupS.toFixed(2)} s, ${perBatch.toFixed(0)} changes per upstream batch) ${check}`);
    }

    // Drain: a backlog built while B's agent was down, store-and-forward through the hub.
    {
      const dbase = 11_000_000_000;
      const { lo, hi, done } = phaseBounds("insert", dbase, s.inserts, 0, 0);
      const n = hi - lo + 1;
      await pair.barrier(timeout);
      await pair.stopB();
      const w = await runStatements(writer, statements("insert", lo, hi, s.batch));
      // Wait until A's agent has handed everything to the hub, so the timed part is hub → B only.
      const up = await waitUntil(pair.a.pool, "SELECT NOT EXISTS (SELECT 1 FROM _branchsync.txns)", timeout, 20);
      await checkpoint(pair.a.pool);
      await sleep(ctx.quick ? 200 : 1000);
      if ((await poller.query(done)).rows[0].exists === true) res.errors.push("drain: rows visible on B while its agent was stopped");
      const seen = waitUntil(poller, done, timeout);
      seen.catch(() => undefined);
      await sleep(200);
      const c0 = cpu(pair);
      const f0 = pairFaults(pair);
      const t0 = nowMs();
      const b = pair.spawnB();
      let tReady = NaN;
      b.waitForLine(/branchsync agent running/, timeout).then(() => { tReady = nowMs(); }, () => undefined);
      const first = waitUntil(poller, `SELECT EXISTS(SELECT 1 FROM public.items WHERE id=${lo})`, timeout, 5);
      first.catch(() => undefined);
      const t2 = await seen;
      const t1st = await first.catch(() => NaN);
      const c1 = cpu(pair);
      const f1 = pairFaults(pair);
      const [da, db] = [await digest(pair.a.pool, String(lo), String(hi)), await digest(pair.b.pool, String(lo), String(hi))];
      const check = da === db ? "OK" : "MISMATCH";
      if (check !== "OK") { res.ok = false; res.errors.push(`drain: digest A=${da} B=${db}`); }
      const e = (t2 - t0) / 1000;
      const p = { kind: "drain insert", rows: n, drainS: e, rowsPerS: n / e, agentStartS: (tReady - t0) / 1000, firstRowS: (t1st - t0) / 1000,
        fromFirstRowRowsPerS: t2 - t1st > 1 ? n / ((t2 - t1st) / 1000) : NaN, aWroteS: (w.t1 - w.t0) / 1000, aUploadDoneS: (up - w.t0) / 1000,
        cpuS: cpuDelta(c0, c1), faults: cpuDelta(f0, f1), digestA: da, digestB: db, check };
      phases.push(p);
      rows.push([`drain insert`, n, e.toFixed(3), Math.round(n / e), `${p.aWroteS.toFixed(3)} (A wrote)`,
        `${Math.max(0, (t2 - t1st) / 1000).toFixed(3)} (1st→last)`, ...cpuCells(p.cpuS, n), faultsPerRow(p.faults, n), check]);
      ctx.log(`  drain: ${n} rows in ${e.toFixed(2)} s = ${Math.round(n / e)} rows/s (agent up after ${p.agentStartS.toFixed(2)} s, first row at ${p.firstRowS.toFixed(2)} s) ${check}`);
      notes.push(
        `drain: B's agent stopped, ${n} inserts written on A and uploaded to the hub (A's agent done ${p.aUploadDoneS.toFixed(2)} s after A's first commit), then B's agent process started:`,
        `  e2e = spawn of \`branchsync agent\` → last row on B (process start + module load ${Number.isNaN(p.agentStartS) ? "?" : p.agentStartS.toFixed(2)} s, first row at ${p.firstRowS.toFixed(2)} s; from first to last row ${Number.isNaN(p.fromFirstRowRowsPerS) ? "all in one apply" : `${Math.round(p.fromFirstRowRowsPerS)} rows/s`}).`);
    }
    await pair.barrier(timeout);
    const [fa, fb] = [await digest(pair.a.pool), await digest(pair.b.pool)];
    if (fa !== fb) { res.ok = false; res.errors.push(`whole table differs: A=${fa} B=${fb}`); }
    notes.push(`whole public.items after the run: A ${fa === fb ? "=" : "≠"} B (${fa}).`);
  } catch (e) {
    res.ok = false;
    res.errors.push((e as Error).stack ?? String(e));
  } finally {
    await writer.end().catch(() => undefined);
    await poller.end().catch(() => undefined);
    await pair.close();
  }
  let capture: CaptureCost | null = null;
  try {
    if (!res.ok) throw new Error("skipped after the failure above");
    ctx.log("  capture cost for the writer: W1 inserts without and with capture triggers, nothing else running");
    capture = await captureCost(ctx);
    rows.push([`A only, no capture`, capture.rows, capture.plainS.toFixed(3), Math.round(capture.plainRowsPerS), capture.plainS.toFixed(3), "-", "-", "-", "-", "-", "-", "-", "-", "-", "-"]);
    rows.push([`A only, capture on`, capture.rows, capture.capturedS.toFixed(3), Math.round(capture.capturedRowsPerS), capture.capturedS.toFixed(3), "-", "-", "-", "-", "-", "-", "-", "-", "-", "-"]);
    const u = capture.updates;
    rows.push([`A only, upd, no capture`, u.rows, u.plainS.toFixed(3), Math.round(u.plainRowsPerS), u.plainS.toFixed(3), "-", "-", "-", "-", "-", "-", "-", "-", "-", "-"]);
    rows.push([`A only, upd, capture on`, u.rows, u.capturedS.toFixed(3), Math.round(u.capturedRowsPerS), u.capturedS.toFixed(3), "-", "-", "-", "-", "-", "-", "-", "-", "-", "-"]);
    const b = capture.bulkAfterSingles;
    rows.push([`A only, 1 bulk upd, no capture`, b.rows, b.plainS.toFixed(3), Math.round(b.plainRowsPerS), b.plainS.toFixed(3), "-", "-", "-", "-", "-", "-", "-", "-", "-", "-"]);
    rows.push([`A only, 1 bulk upd, capture on`, b.rows, b.capturedS.toFixed(3), Math.round(b.capturedRowsPerS), b.capturedS.toFixed(3), "-", "-", "-", "-", "-", "-", "-", "-", "-", "-"]);
    notes.push(`"A only" rows: the W1 inserts, then updates, into a scratch database with no agent/hub running, without and with the capture triggers (agent/capture/install.ts): capture makes the writer ${capture.ratio.toFixed(2)}× slower for inserts, ${u.ratio.toFixed(2)}× for updates.`);
    const o = capture.singleRowTxns;
    rows.push([`A only, 1-row upd txns, no capture`, o.rows, o.plainS.toFixed(3), Math.round(o.plainRowsPerS), o.plainS.toFixed(3), "-", "-", "-", "-", "-", "-", "-", "-", "-", "-"]);
    rows.push([`A only, 1-row upd txns, capture on`, o.rows, o.capturedS.toFixed(3), Math.round(o.capturedRowsPerS), o.capturedS.toFixed(3), "-", "-", "-", "-", "-", "-", "-", "-", "-", "-"]);
    notes.push(`"1-row upd txns": ${o.rows} single-row UPDATEs, each its own transaction (a till's sale), one client, synchronous_commit off (the WAL flush would bury the CPU): capture makes each ${o.ratio.toFixed(2)}× slower, ${((o.capturedS - o.plainS) * 1e6 / o.rows).toFixed(0)} µs more per transaction (round trip included in both).`);
    notes.push(`"1 bulk upd": one UPDATE of ${b.rows} rows in a new session after six single-row updates (the plan a trigger keeps is made for those): capture makes it ${b.ratio.toFixed(2)}× slower.`);
  } catch (e) {
    res.errors.push(`capture cost: ${(e as Error).message}`);
  } finally {
    res.data = { phases, capture, baseRows: s.baseRows, batch: s.batch };
    res.tables.push({
      title: "throughput A → B (hub + 2 agent processes)",
      header: ["workload", "rows", "e2e s", "rows/s", "A-side s", "catch-up s", "hub CPU s", "agent A CPU s", "agent B CPU s",
        "hub PG CPU s", "A PG CPU s (writer too)", "B PG CPU s", "all six CPU µs/row", "six faults/row", "check"],
      rows, notes,
    });
  }
  return res;
}

/** The hub's ingest counters (branchsync_changes/batches_ingested_total): how the branches batched. */
async function hubCounters(httpPort: number): Promise<{ changes: number; batches: number }> {
  const text = await (await fetch(`http://127.0.0.1:${httpPort}/metrics`)).text();
  const value = (name: string) => Number(new RegExp(`^${name} (\\S+)$`, "m").exec(text)?.[1] ?? NaN);
  return { changes: value("branchsync_changes_ingested_total"), batches: value("branchsync_batches_ingested_total") };
}
