/**
 * Section 4, concurrent idle SyncStreams on one hub process: client worker
 * processes (bench/workers/streams.ts) open authenticated streams (Hello with
 * one small table) in steps; at each step the hub's RSS (VmRSS), its idle
 * CPU and PostgreSQL transaction rate, and the Ping→Pong round trip.
 * One branch + API key per stream is expensive to create, so a few branches'
 * tokens are reused across many streams (the hub keys sessions by stream).
 */
import pg from "pg";
import fs from "node:fs";
import path from "node:path";
import type { BenchContext, SectionResult } from "../lib/context.ts";
import { startHubProc, createTenant, createBranch, issueToken } from "../lib/deploy.ts";
import { spawnWorker, readNofile } from "../lib/procs.ts";
import { workerIO, type WorkerIO } from "../lib/workerio.ts";
import { summarize, sleep } from "../lib/stats.ts";

const STREAMS_PER_WORKER = 5_000;
/** Longest the bench waits for one step's streams to open (the hub opens them at its own pace). */
const OPEN_BUDGET_S = 180;

interface Opened { total: number; failed: number; dropped: number; notTried: number; errors: string[]; ms: number; dropReasons: Record<string, number> }
interface Pings { rtts: number[]; lost: number; dropped: number; dropReasons: Record<string, number> }

export async function streams(ctx: BenchContext): Promise<SectionResult> {
  const s = ctx.sizes;
  const res: SectionResult = { section: "streams", command: ctx.command("streams"), ok: true, tables: [], data: {}, errors: [] };
  const maxLevel = Math.max(...s.streamLevels);
  const nWorkers = Math.max(1, Math.ceil(maxLevel / STREAMS_PER_WORKER));
  ctx.log(`streams: hub + ${nWorkers} client process(es), ${s.streamBranches} branches' tokens shared by up to ${maxLevel} streams, ${s.streamsPerConn} streams per HTTP/2 connection`);
  const hub = await startHubProc(ctx, "st_hub", { nofile: 65536 });
  const tenant = `st_${ctx.tag}`;
  await createTenant(hub, tenant);
  const tokens: { token: string; tenant: string }[] = [];
  for (let i = 0; i < s.streamBranches; i++) tokens.push({ token: await issueToken(hub, await createBranch(hub, tenant, `s${i}`)), tenant });
  const hubDb = new pg.Client({ connectionString: hub.dbUrl });
  await hubDb.connect();
  const xacts = async () => Number((await hubDb.query("SELECT xact_commit + xact_rollback AS n FROM pg_stat_database WHERE datname = current_database()")).rows[0].n);
  const workers: WorkerIO[] = [];
  const rows: (string | number)[][] = [];
  const levels: Record<string, unknown>[] = [];
  const rng = ctx.rng("streams");
  try {
    for (let w = 0; w < nWorkers; w++) {
      const file = path.join(ctx.logDir, `streams_worker${w}.json`);
      fs.writeFileSync(file, JSON.stringify({ address: `127.0.0.1:${hub.grpcPort}`, tokens, streamsPerConn: s.streamsPerConn, seed: Math.floor(rng() * 2 ** 31) }), { mode: 0o600 });
      const io = workerIO(spawnWorker(`st_client${w}`, "streams.ts", [file], { logDir: ctx.logDir, nofile: 65536, nodeArgs: ["--max-old-space-size=4096"] }));
      await io.next("started", 60_000);
      workers.push(io);
    }
    await sleep(1000);
    const baseRss = hub.proc.rssKb() ?? 0;
    let total = 0;
    for (const level of s.streamLevels) {
      const add = level - total;
      if (add <= 0) continue;
      const per = workers.map((_, i) => Math.floor(add / nWorkers) + (i < add % nWorkers ? 1 : 0));
      const opened = await Promise.all(workers.map((w, i) => w.request<Opened>({ cmd: "open", n: per[i], budgetMs: OPEN_BUDGET_S * 1000 }, "opened", (OPEN_BUDGET_S + 120) * 1000)));
      total = opened.reduce((a, o) => a + o.total, 0);
      const failed = opened.reduce((a, o) => a + o.failed, 0);
      const openS = Math.max(...opened.map((o) => o.ms)) / 1000;
      const errors = [...new Set(opened.flatMap((o) => o.errors))];
      const notTried = opened.reduce((a, o) => a + o.notTried, 0);
      // Idle: let the sessions settle, then measure what idleness costs.
      await sleep(ctx.quick ? 1000 : 3000);
      const settle = ctx.quick ? 1 : 5;
      const c0 = hub.proc.cpuSeconds() ?? 0;
      const x0 = await xacts();
      await sleep(settle * 1000);
      const idleCpu = (100 * ((hub.proc.cpuSeconds() ?? 0) - c0)) / settle;
      const idleTps = ((await xacts()) - x0) / settle;
      const rssKb = hub.proc.rssKb() ?? NaN;
      const spreadMs = ctx.quick ? 1000 : 5000;
      const pings = await Promise.all(workers.map((w, i) => w.request<Pings>({ cmd: "ping", count: Math.ceil(s.streamPings / nWorkers), spreadMs }, "pings", spreadMs + 30_000)));
      const rtts = pings.flatMap((p) => p.rtts);
      const lost = pings.reduce((a, p) => a + p.lost, 0);
      const dropped = pings.reduce((a, p) => a + p.dropped, 0);
      const dropReasons: Record<string, number> = {};
      for (const p of pings) for (const [k, v] of Object.entries(p.dropReasons)) dropReasons[k] = (dropReasons[k] ?? 0) + v;
      const sm = summarize(rtts);
      const perStreamKb = (rssKb - baseRss) / Math.max(total, 1);
      const alive = hub.proc.alive();
      levels.push({ target: level, open: total, failed, dropped, dropReasons, notTried, openS, errors, rssKb, baseRssKb: baseRss, perStreamKb, idleCpuPct: idleCpu, idleHubDbTps: idleTps, rttMs: sm, lost, hubAlive: alive });
      rows.push([level, total, `${failed}/${dropped}`, `${openS.toFixed(1)}${notTried ? ` (budget; ${notTried} not tried)` : ""}`, (rssKb / 1024).toFixed(0), perStreamKb.toFixed(1), idleCpu.toFixed(0), Math.round(idleTps),
        sm.p50.toFixed(1), sm.p99.toFixed(1), sm.max.toFixed(1), `${rtts.length}/${rtts.length + lost}`]);
      ctx.log(`  ${total} streams (${failed} failed, ${dropped} dropped): hub RSS ${(rssKb / 1024).toFixed(0)} MiB, idle CPU ${idleCpu.toFixed(0)} %, hub DB ${Math.round(idleTps)} xact/s, ping p50 ${sm.p50.toFixed(1)} p99 ${sm.p99.toFixed(1)} ms`);
      if (errors.length) ctx.log(`    open errors: ${errors.join(" | ")}`);
      if (dropped) ctx.log(`    dropped: ${JSON.stringify(dropReasons)}`);
      if (!alive || failed + dropped > 0.01 * level) {
        res.errors.push(`stopped at ${level} streams: ${failed} failed to open, ${dropped} dropped (${JSON.stringify(dropReasons)})${alive ? "" : ", hub died"}${errors.length ? `: ${errors.join(" | ")}` : ""}`);
        if (ctx.quick || level === s.streamLevels[0]) res.ok = false;
        break;
      }
      if (lost > 0) res.errors.push(`${lost} pings unanswered at ${level} streams`);
      if (notTried > 0) {
        res.errors.push(`stopped at ${level} streams: the hub opened only ${total} within the ${OPEN_BUDGET_S} s budget of the step`);
        break;
      }
    }
  } finally {
    const nofile = { hub: readNofile(hub.proc.pid), clients: workers.map((w) => readNofile(w.proc.pid)) };
    res.data = { levels, nofile, streamsPerConn: s.streamsPerConn, branches: s.streamBranches, workers: nWorkers };
    res.tables.push({
      title: "idle SyncStreams on one hub process",
      header: ["target", "open", "failed/dropped", "open s (step)", "hub RSS MiB", "KiB/stream", "hub idle CPU %", "hub DB xact/s idle", "ping p50 ms", "p99 ms", "max ms", "pongs"],
      rows,
      notes: [
        `steps: each waits at most ${OPEN_BUDGET_S} s for its streams to open; streams opened in steps by ${nWorkers} client process(es) (bench/workers/streams.ts, grpc-js + lib/wire.ts openSyncStream), ${s.streamsPerConn} streams per HTTP/2 connection; each sent Hello with one 2-column table and answers hub pings.`,
        `${s.streamBranches} branches (API key → token) shared round-robin by all streams; every stream is still its own authenticated session.`,
        "KiB/stream = (hub VmRSS − VmRSS before any stream) / open streams. Idle CPU and hub DB xact/s measured over a quiet window after opening (100 % = one core).",
        `fd limit (ulimit -n 65536 asked, capped by the hard limit): hub ${nofile.hub}, clients ${nofile.clients.join("/")}.`,
        `ping: ${s.streamPings} Ping→Pong round trips on random streams, spread over ${ctx.quick ? 1 : 5} s.`,
      ],
    });
    for (const w of workers) await w.proc.stop(10_000);
    await hubDb.end().catch(() => undefined);
    await hub.proc.stop(20_000);
  }
  return res;
}
