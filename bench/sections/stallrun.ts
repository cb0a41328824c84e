/**
 * One run of the stall section: its own hub process, one tenant, branch A
 * with a real agent writing W1 inserts, and optionally the two misbehaving
 * receivers of bench/workers/stall.ts (without them the run is the control).
 * Each phase writes its rows and ends when A's agent has uploaded them all;
 * hub and agent RSS are sampled throughout. Everything started here is
 * stopped before it returns.
 */
import pg from "pg";
import fs from "node:fs";
import path from "node:path";
import type { BenchContext } from "../lib/context.ts";
import { startHubProc, createTenant, createBranch, issueToken, startAgentProc } from "../lib/deploy.ts";
import { createDb } from "../lib/pg.ts";
import { ITEMS_DDL, w1Statements } from "../lib/items.ts";
import { runStatements } from "../lib/pair.ts";
import { waitUntil } from "../lib/poll.ts";
import { spawnWorker, type Proc } from "../lib/procs.ts";
import { workerIO, type WorkerIO } from "../lib/workerio.ts";
import { sampleRss, type RssSampler, type RssSpan } from "../lib/rss.ts";
import { nowMs, sleep } from "../lib/stats.ts";
import { DEFAULT_LIMITS } from "../../hub/stream/session.ts";
import type { LogStats, PhaseResult, ReceiverStats } from "./stallcheck.ts";

export const RSS_SAMPLE_MS = 200;
/** Agent A's largest semi-space (MiB), for its RSS to show buffering rather than V8's young-generation sizing. */
export const AGENT_SEMI_SPACE_MIB = 4;
/** The hubs' HEAP_GROWING_PERCENT here (0: V8's own choice) and largest semi-space (MiB). */
export const HUB_HEAP_GROWING_PERCENT = 0;
export const HUB_SEMI_SPACE_MIB = 4;
/** Nothing left to upload: every captured transaction has its hub sequence number. */
const UPLOADED = "SELECT NOT EXISTS (SELECT 1 FROM _branchsync.txns WHERE seq IS NULL)";

export interface RunOptions {
  /** Short name for databases, processes and the tenant. */
  name: string;
  receivers: boolean;
  /** Rows of each phase. */
  phases: { phase: string; rows: number }[];
  /** Waited after each phase's upload, inside the phase's RSS span. */
  settleMs: number;
  timeoutMs: number;
}

export interface RunResult {
  tenant: string;
  phases: PhaseResult[];
  /** The receivers after the stalled one read again (null for the control). */
  resumed: ReceiverStats[] | null;
  resumeRss: { hub: RssSpan; agentA: RssSpan } | null;
  rss: ReturnType<RssSampler["series"]> | null;
}

export async function runStall(ctx: BenchContext, o: RunOptions): Promise<RunResult> {
  const a = await createDb(ctx.server, `${o.name}_a`, ctx.tag, ITEMS_DDL);
  // Both hubs (stall and control) run with V8's own old-generation growth
  // and a young generation pinned small, like agent A below: the peak RSS
  // of identical runs moved between 39 and 66 MiB with V8's young-generation
  // sizing and with where a full GC fell (at the hub's default growth,
  // lib/heap.ts, garbage may float up to four times the live heap), which
  // the checks read as buffering in about one run in three. Buffering
  // would grow the old generation and external memory, which stay measured.
  const hub = await startHubProc(ctx, `${o.name}_hub`, { env: {
    HEAP_GROWING_PERCENT: String(HUB_HEAP_GROWING_PERCENT), NODE_OPTIONS: `--max-semi-space-size=${HUB_SEMI_SPACE_MIB}` } });
  const tenant = `${o.name}_${ctx.tag}`.slice(0, 30);
  const schema = `"tenant_${tenant}"`;
  const hubDb = new pg.Client({ connectionString: hub.dbUrl });
  const writer = new pg.Client({ connectionString: a.url });
  let io: WorkerIO | null = null;
  let agentA: Proc | null = null;
  let sampler: RssSampler | null = null;
  const out: RunResult = { tenant, phases: [], resumed: null, resumeRss: null, rss: null };
  try {
    await createTenant(hub, tenant);
    await hubDb.connect();
    await writer.connect();
    if (o.receivers) io = await startReceivers(ctx, o.name, hub.grpcPort, tenant, (b) => createBranch(hub, tenant, b).then((k) => issueToken(hub, k)));
    // A's young generation pinned small: V8 grows it with the allocation
    // rate, up to 16 MiB per semi-space, and that step (bounded, whatever
    // the backlog) read as A's memory growing with it. Buffering would grow
    // the old generation and external memory, which stay measured.
    agentA = await startAgentProc(ctx, hub, `${o.name}_agent_a`, { tenantId: tenant, branchId: "a", apiKey: await createBranch(hub, tenant, "a"), dbUrl: a.url, tables: "public.items" },
      [`--max-semi-space-size=${AGENT_SEMI_SPACE_MIB}`]);
    const logStats = async (): Promise<LogStats> => {
      const { rows: [r] } = await hubDb.query(`SELECT coalesce(sum(n_changes), 0)::bigint AS changes, coalesce(sum(octet_length(body)), 0)::bigint AS payload,
        pg_total_relation_size('${schema}.log') AS disk FROM ${schema}.log`);
      return { changes: Number(r.changes), payloadBytes: Number(r.payload), diskBytes: Number(r.disk) };
    };
    const report = async () => (io ? (await io.request<{ receivers: ReceiverStats[] }>({ cmd: "report" }, "report", 10_000)).receivers : []);
    sampler = sampleRss({ hub: hub.proc, agentA }, RSS_SAMPLE_MS);
    await sleep(1000);

    let written = 0;
    let before = await logStats();
    for (const { phase, rows } of o.phases) {
      const from = sampler.mark();
      const t0 = nowMs();
      const w = await runStatements(writer, w1Statements("insert", written + 1, written + rows, ctx.sizes.batch));
      await waitUntil(a.pool, UPLOADED, o.timeoutMs, 20);
      const uploadS = (nowMs() - t0) / 1000;
      written += rows;
      // The receivers' sessions see the new head now; a hub that buffered
      // for them would be doing it during this wait, inside the span.
      await sleep(o.settleMs);
      const rss = sampler.span(from) as PhaseResult["rss"];
      const log = await logStats();
      out.phases.push({ phase, rows, totalRows: written, writeS: (w.t1 - t0) / 1000, uploadS, log, addedPayloadBytes: log.payloadBytes - before.payloadBytes, rss, receivers: await report() });
      before = log;
      ctx.log(`  ${o.name} ${phase}: ${rows} rows uploaded in ${uploadS.toFixed(1)} s; hub RSS ${(rss.hub.startKb / 1024).toFixed(0)} → peak ${(rss.hub.peakKb / 1024).toFixed(0)} MiB; hub log ${log.changes} changes`);
    }
    if (io) {
      // What the hub had put in flight for the stalled receiver: it reads
      // again (still never acks) and takes whatever comes until the hub goes quiet.
      const from = sampler.mark();
      out.resumed = (await io.request<{ receivers: ReceiverStats[] }>({ cmd: "resume", quietMs: ctx.quick ? 1000 : 2000 }, "resumed", 60_000)).receivers;
      out.resumeRss = sampler.span(from) as PhaseResult["rss"];
    }
  } finally {
    sampler?.stop();
    out.rss = sampler?.series() ?? null;
    await io?.proc.stop(10_000);
    await agentA?.stop();
    await hub.proc.stop(20_000);
    await writer.end().catch(() => undefined);
    await hubDb.end().catch(() => undefined);
  }
  return out;
}

/** The stalled and the no-ack receiver, each a branch of `tenant` with its own token, welcomed by the hub. */
async function startReceivers(ctx: BenchContext, name: string, grpcPort: number, tenant: string, token: (branch: string) => Promise<string>): Promise<WorkerIO> {
  const receivers = [];
  for (const mode of ["stalled", "noack"] as const) receivers.push({ name: mode, mode, token: await token(mode), tenant });
  const file = path.join(ctx.logDir, `${name}_receivers.json`);
  // The hub ends a session it has not heard from for three heartbeat
  // intervals; a Ping every interval keeps the stalled one open.
  fs.writeFileSync(file, JSON.stringify({ address: `127.0.0.1:${grpcPort}`, keepaliveMs: DEFAULT_LIMITS.heartbeatMs, receivers }), { mode: 0o600 });
  const io = workerIO(spawnWorker(`${name}_receivers`, "stall.ts", [file], { logDir: ctx.logDir, cpuProfDir: ctx.cpuProfDir }));
  await io.next("ready", 60_000);
  return io;
}
