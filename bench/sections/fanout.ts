/**
 * Section 3, fan-out: one writer branch (an agent process) and N receiving
 * branches (all N agents in ONE worker process, startAgent from
 * agent/main.ts). ~50 single-row inserts on the writer; per insert, the time
 * until the LAST receiving branch has it (deferred arrival triggers).
 */
import pg from "pg";
import fs from "node:fs";
import path from "node:path";
import type { BenchContext, SectionResult } from "../lib/context.ts";
import { createDb, freeConnections, privateCluster, type BenchDb, type PgServer } from "../lib/pg.ts";
import { startHubProc, createTenant, createBranch, startAgentProc, agentEnv } from "../lib/deploy.ts";
import { spawnWorker } from "../lib/procs.ts";
import { ITEMS_DDL, ARRIVAL_TRIGGER, SENT_TRIGGER, PROBE_BASE } from "../lib/items.ts";
import { waitUntil } from "../lib/poll.ts";
import { summarize, sleep } from "../lib/stats.ts";
import { makePool } from "../../lib/pgpool.ts";
import { damonMonitors, kdamondCpuSeconds } from "../lib/machine.ts";

/** Connections one agent holds at most: its pool (4) + the LISTEN connection. */
const CONN_PER_AGENT = 5;
/** Probes sent and not counted before the measured ones. */
const WARMUP_S = 3;

async function allHave(dbs: BenchDb[], sql: string, timeoutMs: number): Promise<void> {
  await Promise.all(dbs.map((d) => waitUntil(d.pool, sql, timeoutMs, 20)));
}

export async function fanout(ctx: BenchContext): Promise<SectionResult> {
  const n = ctx.sizes.fanoutBranches;
  const res: SectionResult = { section: "fanout", command: ctx.command("fanout"), ok: true, tables: [], data: {}, errors: [] };
  let server: PgServer = ctx.server;
  const needed = (n + 1) * CONN_PER_AGENT + 40;
  const free = server.kind === "main" ? await freeConnections(server) : Infinity;
  if (free < needed) {
    ctx.log(`fanout: ${n + 1} agents need up to ~${needed} connections, ${server.describe} has ${free} free: using a private cluster`);
    server = await privateCluster(`${ctx.tag}f`, needed + 100);
  }
  ctx.log(`fanout: hub + writer agent + ${n} receiving agents in one process, on ${server.describe}`);
  const commitTs = server.commitTimestamps;
  const a = await createDb(server, "fo_w", ctx.tag, ITEMS_DDL + (commitTs ? "" : SENT_TRIGGER));
  const receivers: BenchDb[] = [];
  for (let i = 0; i < n; i++) {
    const db = await createDb(server, `fo_r${i}`, ctx.tag, ITEMS_DDL + ARRIVAL_TRIGGER);
    await db.pool.end();
    // Kept open: pg's default pool closed all 50 at once 10 s after the
    // warm-up's checks, mid-probes, and 50 backends exiting stalled both
    // vCPUs of this VM for up to 160 ms (a 1 ms sleep loop per CPU saw it).
    receivers.push({ ...db, pool: makePool(db.url, 1) });
  }
  const hub = await startHubProc(ctx, "fo_hub", { server });
  const tenant = `fo_${ctx.tag}`;
  await createTenant(hub, tenant);
  const writerKey = await createBranch(hub, tenant, "writer");
  const envs: Record<string, string>[] = [];
  for (let i = 0; i < n; i++) {
    const id = `r${String(i).padStart(2, "0")}`;
    envs.push({ ...agentEnv(hub, { tenantId: tenant, branchId: id, apiKey: await createBranch(hub, tenant, id), dbUrl: receivers[i].url, tables: "public.items" }), ...ctx.agentEnv });
  }
  const cfgFile = path.join(ctx.logDir, "fanout_agents.json");
  fs.writeFileSync(cfgFile, JSON.stringify(envs), { mode: 0o600 });
  const writer = await startAgentProc(ctx, hub, "fo_agent_writer", { tenantId: tenant, branchId: "writer", apiKey: writerKey, dbUrl: a.url, tables: "public.items" });
  const worker = spawnWorker("fo_agents", "agents.ts", [cfgFile], { logDir: ctx.logDir, cpuProfDir: ctx.cpuProfDir, env: { LOG_LEVEL: ctx.agentEnv.LOG_LEVEL ?? "warn" } });
  const rng = ctx.rng("fanout");
  try {
    await worker.waitForLine(/^ready \d+/, 120_000);
    // Barrier: every receiving agent is connected and caught up.
    const { rows } = await a.pool.query(`INSERT INTO public.items(id,sku,qty,price,note,updated_at)
      VALUES (nextval('bench.barrier_seq'),'barrier',0,0,'barrier',clock_timestamp()) RETURNING id`);
    await allHave(receivers, `SELECT EXISTS(SELECT 1 FROM public.items WHERE id=${rows[0].id})`, 120_000);
    // Warm-up, not counted: in the first second after the barrier, probes
    // took 65-235 ms to the last branch against about 33 ms after it (a
    // start-up transient of 51 fresh agents and databases, not fan-out).
    const warm = PROBE_BASE + 1_000_000 + 1;
    const warmProbes = Math.min(Math.ceil((WARMUP_S * 1000) / 100), Math.floor(ctx.sizes.fanoutProbes / 4));
    for (let k = 0; k < warmProbes; k++) {
      await a.pool.query(`INSERT INTO public.items(id, sku, qty, price, note, updated_at) VALUES ($1, 'warm-up', 0, 0, 'warm-up', clock_timestamp())`, [warm + k]);
      await sleep(100 * (0.5 + rng()));
    }
    if (warmProbes > 0) await allHave(receivers, `SELECT EXISTS(SELECT 1 FROM public.items WHERE id=${warm + warmProbes - 1})`, 60_000);
    await sleep(500);
    const cpu0 = { hub: hub.proc.cpuSeconds() ?? 0, agents: worker.cpuSeconds() ?? 0, writer: writer.cpuSeconds() ?? 0 };
    const faults0 = { hub: hub.proc.faults() ?? 0, agents: worker.faults() ?? 0, writer: writer.faults() ?? 0 };
    const sessions0 = await sessionsOpened(a.pool);
    const kdamond0 = kdamondCpuSeconds();
    const t0 = Date.now();
    const first = PROBE_BASE + 2_000_000 + 1;
    const probes = ctx.sizes.fanoutProbes;
    for (let k = 0; k < probes; k++) {
      await a.pool.query(`INSERT INTO public.items(id, sku, qty, price, note, updated_at) VALUES ($1, 'probe', 0, 0, 'probe', clock_timestamp())`, [first + k]);
      await sleep(100 * (0.5 + rng()));
    }
    // Read before the checks below, whose pools on the receivers may reconnect.
    // A backend started mid-run costs its client a connect and cold caches (lib/pgpool.ts).
    const sessions1 = await sessionsOpened(a.pool);
    const kdamond1 = kdamondCpuSeconds();
    const probeWallS = (Date.now() - t0) / 1000;
    const kdamondPct = kdamond0 === null || kdamond1 === null ? null : (100 * (kdamond1 - kdamond0)) / probeWallS;
    const damon = damonMonitors();
    const sessionsDuring = [...sessions1].reduce((acc, [db, k]) => acc + k - (sessions0.get(db) ?? 0), 0);
    const sessionsByDb = Object.fromEntries([...sessions1].filter(([db, k]) => k > (sessions0.get(db) ?? 0)).map(([db, k]) => [db, k - (sessions0.get(db) ?? 0)]));
    const last = first + probes - 1;
    let complete = true;
    await allHave(receivers, `SELECT count(*) >= ${probes} FROM bench.probe_arrival WHERE id BETWEEN ${first} AND ${last}`, 60_000).catch(() => { complete = false; });
    const wallS = (Date.now() - t0) / 1000;
    const cpu1 = { hub: hub.proc.cpuSeconds() ?? 0, agents: worker.cpuSeconds() ?? 0, writer: writer.cpuSeconds() ?? 0 };
    const faults = { hub: (hub.proc.faults() ?? 0) - faults0.hub, agents: (worker.faults() ?? 0) - faults0.agents, writer: (writer.faults() ?? 0) - faults0.writer };
    const sent = new Map<number, number>((commitTs
      ? await a.pool.query(`SELECT id, extract(epoch FROM pg_xact_commit_timestamp(xmin)) * 1000 AS t FROM public.items WHERE id BETWEEN $1 AND $2`, [first, last])
      : await a.pool.query(`SELECT id, extract(epoch FROM sent_at) * 1000 AS t FROM bench.probe_sent WHERE id BETWEEN $1 AND $2`, [first, last])
    ).rows.map((r) => [Number(r.id), Number(r.t)]));
    const lastArr = new Map<number, number>();
    const firstArr = new Map<number, number>();
    const count = new Map<number, number>();
    const lastBranch = new Map<number, number>();
    for (const [bi, r] of receivers.entries()) {
      const q = await r.pool.query(`SELECT id, extract(epoch FROM arrived_at) * 1000 AS t FROM bench.probe_arrival WHERE id BETWEEN $1 AND $2`, [first, last]);
      for (const row of q.rows) {
        const id = Number(row.id);
        const t = Number(row.t);
        if (t > (lastArr.get(id) ?? -Infinity)) lastBranch.set(id, bi);
        lastArr.set(id, Math.max(lastArr.get(id) ?? -Infinity, t));
        firstArr.set(id, Math.min(firstArr.get(id) ?? Infinity, t));
        count.set(id, (count.get(id) ?? 0) + 1);
      }
    }
    const toLast: number[] = [];
    const toFirst: number[] = [];
    const perProbe: { id: number; sentMs: number; toFirstMs: number; toLastMs: number; lastBranch: number }[] = [];
    let incomplete = 0;
    for (const [id, t] of sent) {
      if ((count.get(id) ?? 0) < n) { incomplete++; continue; }
      toLast.push(lastArr.get(id)! - t);
      toFirst.push(firstArr.get(id)! - t);
      perProbe.push({ id, sentMs: t, toFirstMs: firstArr.get(id)! - t, toLastMs: lastArr.get(id)! - t, lastBranch: lastBranch.get(id)! });
    }
    if (!complete || incomplete > 0 || sent.size !== probes) {
      res.ok = false;
      res.errors.push(`${incomplete} of ${probes} probes missing at some branch (send times ${sent.size}/${probes})`);
    }
    const L = summarize(toLast);
    const F = summarize(toFirst);
    const f = (x: number) => x.toFixed(1);
    const cpu = { hub: (100 * (cpu1.hub - cpu0.hub)) / wallS, agents: (100 * (cpu1.agents - cpu0.agents)) / wallS, writer: (100 * (cpu1.writer - cpu0.writer)) / wallS };
    const rss = { hubKb: hub.proc.rssKb(), agentsKb: worker.rssKb(), writerKb: writer.rssKb() };
    res.data = { branches: n, probes, toLastMs: L, toFirstMs: F, perProbe, cpuPct: cpu, rss, faults, sessionsDuring, sessionsByDb, kdamondPct, damon, server: server.describe, sendTime: commitTs ? "commit_timestamp" : "deferred_trigger_clock_timestamp" };
    res.tables.push({
      title: `fan-out: 1 writer → ${n} receiving branches`,
      header: ["probes", "to LAST p50 ms", "p95 ms", "p99 ms", "max ms", "to FIRST p50 ms", "p99 ms", "hub CPU %", `${n} agents CPU %`, "hub RSS MiB", `${n} agents RSS MiB`, "check"],
      rows: [[probes, f(L.p50), f(L.p95), f(L.p99), f(L.max), f(F.p50), f(F.p99), cpu.hub.toFixed(0), cpu.agents.toFixed(0),
        ((rss.hubKb ?? 0) / 1024).toFixed(0), ((rss.agentsKb ?? 0) / 1024).toFixed(0), res.ok ? "OK" : "INCOMPLETE"]],
      notes: [
        `single-row inserts on the writer every 100 ms × U(0.5,1.5), after ${warmProbes} of the same not counted; latency = arrival at the last (first) of the ${n} branches − send time on the writer.`,
        `writer = \`branchsync agent\` process; the ${n} receiving agents run in one node process (bench/workers/agents.ts, startAgent); databases on ${server.describe}.`,
        `during the probes: ${sessionsDuring} PostgreSQL sessions opened on the server while probing (pg_stat_database.sessions); page faults hub ${faults.hub}, agents ${faults.agents}, writer ${faults.writer} (~11 µs each on this VM kind).`,
        `the kernel's DAMON monitors: ${damon.length ? damon.join("; ") : "none seen"}; kdamond CPU during the probes ${kdamondPct === null ? "n/a" : `${kdamondPct.toFixed(1)} % of a core`} (session 14: 11–14 % here, and p99 53 ms with DAMON paused against 81–698 ms (about 185 typically) with it on; bench/lib/machine.ts).`,
        commitTs ? "send time = writer's commit timestamp." : "send time = clock_timestamp() at the end of the probe transaction (deferred trigger; track_commit_timestamp off).",
      ],
    });
    ctx.log(`  fan-out to ${n}: last branch p50 ${f(L.p50)} p99 ${f(L.p99)} max ${f(L.max)} ms; first branch p50 ${f(F.p50)} ms`);
  } finally {
    await worker.stop(20_000);
    await writer.stop();
    await hub.proc.stop();
    for (const r of receivers) await r.pool.end().catch(() => undefined);
  }
  return res;
}

/** Sessions ever opened per database on the server (PostgreSQL 14+, pg_stat_database). */
async function sessionsOpened(pool: pg.Pool): Promise<Map<string, number>> {
  const { rows } = await pool.query("SELECT coalesce(datname, '') AS db, sessions::bigint AS n FROM pg_stat_database");
  return new Map(rows.map((r) => [r.db as string, Number(r.n)]));
}
