/**
 * Section 2, propagation latency under load: a probe row inserted on A every
 * ~20 ms (×U(0.5,1.5), seeded) while pgbench runs 500 tx/s of single-row
 * updates on A; arrival on B is stamped by a deferred constraint trigger
 * (ENABLE ALWAYS) into the untracked bench.probe_arrival, as in the anchors.
 * Send time: A's commit timestamp if track_commit_timestamp is on, else
 * clock_timestamp() in a deferred trigger at the end of the probe transaction.
 */
import pg from "pg";
import fs from "node:fs";
import path from "node:path";
import { spawn } from "node:child_process";
import type { BenchContext, SectionResult } from "../lib/context.ts";
import { startPair, type Pair } from "../lib/pair.ts";
import { PROBE_BASE } from "../lib/items.ts";
import { waitUntil } from "../lib/poll.ts";
import { digest, checkpoint } from "../lib/pg.ts";
import { onCleanup } from "../lib/cleanup.ts";
import { pairCpu, cpuDelta } from "../lib/pgcpu.ts";
import { summarize, sleep, nowMs } from "../lib/stats.ts";
import { startControlProbe, damonMonitors, kdamondCpuSeconds, type ControlProbe } from "../lib/machine.ts";

const WARMUP_S = 3;
const TAIL_S = 2;

function startPgbench(ctx: BenchContext, dbName: string, baseRows: number, rate: number, seconds: number): { done: Promise<string> } {
  const script = path.join(ctx.logDir, "latency_bg.sql");
  fs.writeFileSync(script, `\\set id random(1, ${baseRows})\nUPDATE public.items SET qty = qty + 1, updated_at = clock_timestamp() WHERE id = :id;\n`);
  const args = ["-n", "-h", ctx.server.host, "-p", String(ctx.server.port), "-U", "postgres", "-c", "2", "-j", "1",
    "-R", String(rate), "-T", String(seconds), "-f", script, dbName];
  const child = spawn("pgbench", args, { stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  child.stdout.on("data", (d) => { out += d; });
  child.stderr.on("data", (d) => { out += d; });
  const undo = onCleanup(`pgbench ${child.pid}`, () => { child.kill("SIGTERM"); });
  const done = new Promise<string>((resolve, reject) => {
    child.on("error", reject);
    child.on("exit", () => { undo().catch(() => undefined); fs.writeFileSync(path.join(ctx.logDir, "latency_pgbench.log"), out); resolve(out); });
  });
  return { done };
}

/** Splits each probe's latency at the hub: A commit → hub append (log.committed_at), hub append → B. */
async function hubLegs(pair: Pair, first: number, last: number, sent: { id: string; t: string }[], arrived: Map<string, number>) {
  const xid = await pair.a.pool.query(`SELECT id, (pg_current_xact_id()::text::bigint >> 32 << 32) + xmin::text::bigint AS x FROM public.items WHERE id BETWEEN $1 AND $2`, [first, last]);
  const byId = new Map<string, string>(xid.rows.map((r) => [String(r.id), String(r.x)]));
  const hubDb = new pg.Client({ connectionString: pair.hub.dbUrl });
  await hubDb.connect();
  try {
    const log = await hubDb.query(`SELECT origin_txn::text AS x, extract(epoch FROM committed_at) * 1000 AS t FROM "tenant_${pair.tenant}".log
      WHERE origin_branch = 'a' AND origin_txn = ANY($1::bigint[])`, [[...byId.values()]]);
    const hubAt = new Map<string, number>(log.rows.map((r) => [String(r.x), Number(r.t)]));
    const up: number[] = [];
    const down: number[] = [];
    /** [send ms since the first probe, A → hub ms, hub → B ms, A's txid, send ms since epoch]: periodic stalls show up as a rhythm in time; the txid finds the probe in the processes' debug logs. */
    const timeline: [number, number, number, string, number][] = [];
    const t0 = Math.min(...sent.map((r) => Number(r.t)));
    const r3 = (x: number) => Math.round(x * 1000) / 1000;
    for (const r of sent) {
      const h = hubAt.get(byId.get(String(r.id)) ?? "");
      const b = arrived.get(String(r.id));
      if (h === undefined || b === undefined) continue;
      up.push(h - Number(r.t));
      down.push(b - h);
      timeline.push([r3(Number(r.t) - t0), r3(h - Number(r.t)), r3(b - h), byId.get(String(r.id)) ?? "", r3(Number(r.t))]);
    }
    timeline.sort((x, y) => x[0] - y[0]);
    return { up: summarize(up), down: summarize(down), timeline };
  } finally {
    await hubDb.end();
  }
}

export async function latency(ctx: BenchContext): Promise<SectionResult> {
  const s = ctx.sizes;
  const res: SectionResult = { section: "latency", command: ctx.command("latency"), ok: true, tables: [], data: {}, errors: [] };
  const commitTs = ctx.server.commitTimestamps;
  const baseRows = Math.max(s.baseRows, 1000);
  ctx.log(`latency: setting up hub + 2 agents, ${baseRows} base rows; send time from ${commitTs ? "A's commit timestamps" : "a deferred trigger on A"}`);
  const pair = await startPair(ctx, "lat", { baseRows, sentTrigger: !commitTs });
  const writer = new pg.Client({ connectionString: pair.a.url });
  await writer.connect();
  const rng = ctx.rng("latency");
  let control: ControlProbe | null = null;
  try {
    await pair.barrier();
    await checkpoint(pair.a.pool);
    await sleep(ctx.quick ? 200 : 1000);
    const cpu0 = pairCpu(pair);
    control = await startControlProbe(ctx.server.url("postgres"));
    const bg = startPgbench(ctx, pair.a.name, baseRows, s.latencyRate, WARMUP_S + s.latencySeconds + TAIL_S);
    await sleep(WARMUP_S * 1000);
    const first = PROBE_BASE + 1_000_000 + 1;
    let sent = 0;
    const kdamond0 = kdamondCpuSeconds();
    const probing0 = nowMs();
    const end = nowMs() + s.latencySeconds * 1000;
    while (nowMs() < end) {
      await writer.query(`INSERT INTO public.items(id, sku, qty, price, note, updated_at) VALUES ($1, 'probe', 0, 0, 'probe', clock_timestamp())`, [first + sent]);
      sent++;
      await sleep(s.latencyIntervalMs * (0.5 + rng()));
    }
    const kdamond1 = kdamondCpuSeconds();
    const kdamondPct = kdamond0 === null || kdamond1 === null ? null : (100 * (kdamond1 - kdamond0) * 1000) / (nowMs() - probing0);
    const bgOut = await bg.done;
    const cpu1 = pairCpu(pair);
    const machine = { selectOneMs: await control.stop(), damon: damonMonitors(), kdamondPct };
    const tps = Number(/tps = ([\d.]+)/.exec(bgOut)?.[1] ?? NaN);
    const last = first + sent - 1;
    let arrivedAll = true;
    await waitUntil(pair.b.pool, `SELECT count(*) >= ${sent} FROM bench.probe_arrival WHERE id BETWEEN ${first} AND ${last}`, 60_000, 20)
      .catch(() => { arrivedAll = false; });
    const sentRows = commitTs
      ? await pair.a.pool.query(`SELECT id, extract(epoch FROM pg_xact_commit_timestamp(xmin)) * 1000 AS t FROM public.items WHERE id BETWEEN $1 AND $2`, [first, last])
      : await pair.a.pool.query(`SELECT id, extract(epoch FROM sent_at) * 1000 AS t FROM bench.probe_sent WHERE id BETWEEN $1 AND $2`, [first, last]);
    const arrRows = await pair.b.pool.query(`SELECT id, extract(epoch FROM arrived_at) * 1000 AS t FROM bench.probe_arrival WHERE id BETWEEN $1 AND $2`, [first, last]);
    const arrived = new Map<string, number>(arrRows.rows.map((r) => [String(r.id), Number(r.t)]));
    const lat: number[] = [];
    const perProbe: [number, number][] = [];
    for (const r of sentRows.rows) {
      const a = arrived.get(String(r.id));
      if (a !== undefined) { lat.push(a - Number(r.t)); perProbe.push([Number(r.id) - first, Math.round((a - Number(r.t)) * 1000) / 1000]); }
    }
    const lost = sent - lat.length;
    const legs = await hubLegs(pair, first, last, sentRows.rows, arrived);
    await pair.barrier();
    const [da, db] = [await digest(pair.a.pool), await digest(pair.b.pool)];
    const checks: string[] = [];
    if (!arrivedAll || lost > 0) checks.push(`LOST_ROWS=${lost}`);
    if (sentRows.rows.length !== sent) checks.push(`SEND_TIMES=${sentRows.rows.length}/${sent}`);
    if (da !== db) checks.push("TABLE_MISMATCH");
    const check = checks.length ? checks.join(",") : "OK";
    if (checks.length) { res.ok = false; res.errors.push(`latency checks: ${check} (table digest A=${da} B=${db})`); }
    const sm = summarize(lat);
    const f = (x: number) => x.toFixed(1);
    const wall = (s.latencySeconds + WARMUP_S + TAIL_S);
    res.data = { sent, arrived: lat.length, summaryMs: sm, bgTps: tps, sendTime: commitTs ? "commit_timestamp" : "deferred_trigger_clock_timestamp",
      cpuPctDuringLoad: Object.fromEntries(Object.entries(cpuDelta(cpu0, cpu1)).map(([k, v]) => [k, (100 * v) / wall])),
      legsMs: { up: legs.up, down: legs.down }, legTimelineMs: legs.timeline, machine, tableDigestA: da, tableDigestB: db, check, perProbeMs: perProbe };
    const cp = res.data.cpuPctDuringLoad as ReturnType<typeof cpuDelta>;
    res.tables.push({
      title: "latency A → B under background load (hub + 2 agent processes)",
      header: ["probes", "arrived", "p50 ms", "p95 ms", "p99 ms", "max ms", "mean ms", "bg tx/s", "hub CPU %", "agent A CPU %", "agent B CPU %",
        "hub PG CPU %", "A PG CPU % (agent, probes)", "B PG CPU %", "check"],
      rows: [[sent, lat.length, f(sm.p50), f(sm.p95), f(sm.p99), f(sm.max), f(sm.mean), tps.toFixed(0),
        ...[cp.hub, cp.agentA, cp.agentB, cp.hubPg, cp.aPg, cp.bPg].map((x) => x.toFixed(0)), check]],
      notes: [
        `${s.latencySeconds} s of single-row probe inserts on A every ${s.latencyIntervalMs} ms × U(0.5,1.5) while pgbench -R ${s.latencyRate} -c 2 updates random base rows on A (from ${WARMUP_S} s before to ${TAIL_S} s after).`,
        commitTs
          ? "send time = A's commit timestamp (pg_xact_commit_timestamp; track_commit_timestamp=on)."
          : "send time = clock_timestamp() at the end of the probe transaction on A (deferred constraint trigger into untracked bench.probe_sent): track_commit_timestamp is off on this server and turning it on needs a restart. It precedes the commit by the commit flush, like the anchors' commit timestamp.",
        "arrival = clock_timestamp() in a DEFERRABLE INITIALLY DEFERRED constraint trigger (ENABLE ALWAYS) on B, into untracked bench.probe_arrival.",
        "CPU % = process CPU time / wall time of the loaded window (100 % = one core); PG CPU % = the backends connected to that database still open at the end (from /proc): A's is its agent's and the probe writer's, not pgbench's (gone by then).",
        `the machine meanwhile: SELECT 1 on its own connection every 10 ms took p50 ${f(machine.selectOneMs.p50)} / p99 ${f(machine.selectOneMs.p99)} / max ${f(machine.selectOneMs.max)} ms (${machine.selectOneMs.n} round trips); kernel DAMON monitors running: ${machine.damon.length ? machine.damon.join("; ") : "none seen"}, kdamond CPU while probing ${kdamondPct === null ? "n/a" : `${kdamondPct.toFixed(1)} % of a core`} (bench/lib/machine.ts: on this VM kind its sampling took a CPU for ~20 ms every ~0.55 s).`,
        `legs (p50 / p99 ms): A commit → hub log transaction start ${f(legs.up.p50)} / ${f(legs.up.p99)}; hub log transaction start → visible on B ${f(legs.down.p50)} / ${f(legs.down.p99)} (hub log committed_at = now() of its append transaction).`,
      ],
    });
    ctx.log(`  latency: p50 ${f(sm.p50)} p95 ${f(sm.p95)} p99 ${f(sm.p99)} max ${f(sm.max)} ms over ${lat.length}/${sent} probes, bg ${tps.toFixed(0)} tx/s ${check}`);
  } finally {
    await control?.stop().catch((e) => ctx.log(`  latency: control probe: ${(e as Error).message}`));
    await writer.end().catch(() => undefined);
    await pair.close();
  }
  return res;
}
