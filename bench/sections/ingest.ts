/**
 * Section 5, hub ingest: changes/s one hub process accepts durably from many
 * branches pushing at once. Agent-less pushers (bench/workers/ingest.ts) send
 * ChangeBatches of valid public.items INSERT transactions and keep a window
 * of batches awaiting BatchAck, like the agent. Counted: changes in ACCEPTED
 * outcomes acked inside the timed window; afterwards the hub's tenant logs
 * must hold every change the hub accepted.
 */
import pg from "pg";
import fs from "node:fs";
import path from "node:path";
import type { BenchContext, SectionResult } from "../lib/context.ts";
import { startHubProc, createTenant, createBranch, issueToken } from "../lib/deploy.ts";
import { spawnWorker } from "../lib/procs.ts";
import { workerIO } from "../lib/workerio.ts";
import { summarize, sleep } from "../lib/stats.ts";
import { backendCpuSeconds, cpuDelta } from "../lib/pg.ts";

const WARMUP_MS = 1000;

interface Result { acceptedChanges: number; acceptedTxns: number; batches: number; allAcceptedChanges: number; duplicate: number; rejected: number;
  rejectErrors: string[]; ackMs: number[]; downstreamChanges: number; errors: string[]; clientCpuS: number; wallS: number }

export async function ingest(ctx: BenchContext): Promise<SectionResult> {
  const s = ctx.sizes;
  const res: SectionResult = { section: "ingest", command: ctx.command("ingest"), ok: true, tables: [], data: {}, errors: [] };
  const rows: (string | number)[][] = [];
  const runs: Record<string, unknown>[] = [];
  try {
    for (const nTenants of s.ingestTenants) {
      const n = s.ingestBranches;
      ctx.log(`ingest: ${n} pushing branches in ${nTenants} tenant(s), ${s.ingestTxnsPerBatch}×${s.ingestChangesPerTxn}-change transactions per batch, window ${s.ingestWindow}, ${s.ingestSeconds} s`);
      const hub = await startHubProc(ctx, `in${nTenants}_hub`);
      const tenants = Array.from({ length: nTenants }, (_, i) => `in${i}_${ctx.tag}`);
      for (const t of tenants) await createTenant(hub, t);
      const pushers: { token: string; tenant: string }[] = [];
      for (let i = 0; i < n; i++) {
        const tenant = tenants[i % nTenants];
        pushers.push({ token: await issueToken(hub, await createBranch(hub, tenant, `p${i}`)), tenant });
      }
      const file = path.join(ctx.logDir, `ingest_${nTenants}.json`);
      fs.writeFileSync(file, JSON.stringify({ address: `127.0.0.1:${hub.grpcPort}`, pushers, txnsPerBatch: s.ingestTxnsPerBatch,
        changesPerTxn: s.ingestChangesPerTxn, window: s.ingestWindow, streamsPerConn: 1 }), { mode: 0o600 });
      const io = workerIO(spawnWorker(`in${nTenants}_client`, "ingest.ts", [file], { logDir: ctx.logDir, cpuProfDir: ctx.cpuProfDir, nodeArgs: ["--max-old-space-size=4096"] }));
      const hubDb = new pg.Client({ connectionString: hub.dbUrl });
      await hubDb.connect();
      try {
        await io.next("ready", 120_000);
        await sleep(500);
        const ms = s.ingestSeconds * 1000;
        const c0 = hub.proc.cpuSeconds() ?? 0;
        const dbName = new URL(hub.dbUrl).pathname.slice(1);
        const pg0 = await backendCpuSeconds(hubDb, dbName);
        let peakRss = 0;
        const rssTimer = setInterval(() => { peakRss = Math.max(peakRss, hub.proc.rssKb() ?? 0); }, 250);
        const r = await io.request<Result>({ cmd: "go", ms, warmupMs: WARMUP_MS }, "result", ms + WARMUP_MS + 120_000);
        clearInterval(rssTimer);
        const hubCpu = (100 * ((hub.proc.cpuSeconds() ?? 0) - c0)) / r.wallS;
        const pgCpu = (100 * cpuDelta(pg0, await backendCpuSeconds(hubDb, dbName))) / r.wallS;
        let logged = 0;
        for (const t of tenants) {
          logged += Number((await hubDb.query(`SELECT coalesce(sum(n_changes), 0) AS n FROM "tenant_${t}".log`)).rows[0].n);
        }
        const durable = logged === r.allAcceptedChanges;
        const rate = r.acceptedChanges / s.ingestSeconds;
        const ack = summarize(r.ackMs);
        const problems = [...r.errors, ...(r.rejected ? [`${r.rejected} rejected: ${r.rejectErrors.join(" | ")}`] : []),
          ...(durable ? [] : [`hub logs hold ${logged} changes, hub acked ${r.allAcceptedChanges}`]), ...(r.acceptedChanges > 0 ? [] : ["nothing accepted"])];
        if (problems.length) { res.ok = false; res.errors.push(`${nTenants} tenant(s): ${problems.join("; ")}`); }
        runs.push({ tenants: nTenants, branches: n, ...r, ackMs: ack, changesPerS: rate, hubCpuPct: hubCpu, hubPgBackendsCpuPct: pgCpu, hubCpuUsPerChange: (hubCpu * 10_000) / Math.max(rate, 1), hubPeakRssKb: peakRss, loggedChanges: logged, durable });
        rows.push([`${n} branches / ${nTenants} tenant${nTenants > 1 ? "s" : ""}`, Math.round(rate), Math.round(r.acceptedTxns / s.ingestSeconds), ack.p50.toFixed(1), ack.p99.toFixed(1),
          hubCpu.toFixed(0), ((hubCpu * 10_000) / Math.max(rate, 1)).toFixed(0), pgCpu.toFixed(0), (peakRss / 1024).toFixed(0), ((100 * r.clientCpuS) / r.wallS).toFixed(0), r.downstreamChanges, durable && !problems.length ? "OK" : "FAIL"]);
        ctx.log(`  ${Math.round(rate)} changes/s accepted (BatchAck p50 ${ack.p50.toFixed(1)} ms p99 ${ack.p99.toFixed(1)} ms), hub CPU ${hubCpu.toFixed(0)} %, durable ${durable}`);
      } finally {
        await io.proc.stop(10_000);
        await hubDb.end().catch(() => undefined);
        await hub.proc.stop(20_000);
      }
    }
  } finally {
    res.data = { runs, window: s.ingestWindow, txnsPerBatch: s.ingestTxnsPerBatch, changesPerTxn: s.ingestChangesPerTxn, seconds: s.ingestSeconds };
    res.tables.push({
      title: "hub ingest: changes/s accepted durably by one hub process",
      header: ["pushers", "changes/s", "txns/s", "BatchAck p50 ms", "p99 ms", "hub CPU %", "hub CPU µs/change", "hub-DB backends CPU %", "hub peak RSS MiB", "client CPU %", "downstream changes recv", "check"],
      rows,
      notes: [
        `each pusher = one SyncStream (own branch, own token, own HTTP/2 connection) sending batches of ${s.ingestTxnsPerBatch} transactions × ${s.ingestChangesPerTxn} INSERT changes of valid public.items rows, ${s.ingestWindow} batches awaiting BatchAck at a time (like the agent's UPSTREAM_WINDOW; --ingest-window).`,
        `counted: ACCEPTED changes acked within ${s.ingestSeconds} s after a ${WARMUP_MS / 1000} s warm-up; check = hub tenant logs hold exactly the changes the hub acked, no errors/rejections.`,
        "CPU % over the whole push (incl. warm-up and final acks), 100 % = one core; hub-DB backends = the PostgreSQL processes serving the hub's pool.",
        "pushers in one tenant also receive each other's changes downstream; they never ack them, so the hub's downstream window (2 batches) stalls them, as for a stalled branch.",
      ],
    });
  }
  return res;
}
