/**
 * Section 6, stalled receivers: a branch that stops reading, or reads and
 * never acks, must not make the hub hold the backlog in memory. The hub
 * allows a session DEFAULT_LIMITS.downstreamWindow unacknowledged batches
 * and awaits transport backpressure; this shows what that bounds. Two runs
 * on fresh hubs (stallrun.ts): one with a stalled and a no-ack receiver
 * beside the writing branch A, and the control without them; in both A
 * writes N rows, then 2N more. The checks are in stallcheck.ts.
 */
import type { BenchContext, SectionResult } from "../lib/context.ts";
import type { RssSpan } from "../lib/rss.ts";
import { DEFAULT_LIMITS } from "../../hub/stream/session.ts";
import { runStall, RSS_SAMPLE_MS, AGENT_SEMI_SPACE_MIB, HUB_HEAP_GROWING_PERCENT, HUB_SEMI_SPACE_MIB, type RunResult } from "./stallrun.ts";
import { stallChecks, type Bounds, type PhaseResult, type ReceiverStats } from "./stallcheck.ts";

const BOUNDS: Omit<Bounds, "assertMemory"> = { window: DEFAULT_LIMITS.downstreamWindow, growthMiB: 64, payloadFraction: 0.5, stepMiB: 16 };

const mib = (kb: number) => (kb / 1024).toFixed(0);
const mibB = (bytes: number) => (bytes / 2 ** 20).toFixed(1);

function receiverCells(rs: ReceiverStats[]): string[] {
  const st = rs.find((r) => r.mode === "stalled");
  const na = rs.find((r) => r.mode === "noack");
  return [st ? `${st.changes} (${st.batches}; ${st.buffered} buffered)` : "-", na ? `${na.changes} (${na.batches})` : "-"];
}

function rssCells(rss: { hub: RssSpan; agentA: RssSpan }): string[] {
  return [mib(rss.hub.startKb), mib(rss.hub.peakKb), mib(rss.hub.endKb), `${mib(rss.agentA.startKb)} / ${mib(rss.agentA.peakKb)}`];
}

function tableRows(label: string, r: RunResult): (string | number)[][] {
  const rows: (string | number)[][] = r.phases.map((p: PhaseResult) => [
    `${label} ${p.phase}`, p.rows, `${mibB(p.log.diskBytes)} (${mibB(p.log.payloadBytes)})`, ...rssCells(p.rss), p.uploadS.toFixed(1), ...receiverCells(p.receivers), p.log.changes,
  ]);
  if (r.resumed && r.resumeRss) rows.push([`${label}: stalled reads again`, "-", "", ...rssCells(r.resumeRss), "", ...receiverCells(r.resumed), ""]);
  return rows;
}

export async function stall(ctx: BenchContext): Promise<SectionResult> {
  const s = ctx.sizes;
  const res: SectionResult = { section: "stall", command: ctx.command("stall"), ok: true, tables: [], data: {}, errors: [] };
  const settleMs = ctx.quick ? 500 : 2000;
  const common = {
    phases: [{ phase: "phase 1", rows: s.stallRows }, { phase: "phase 2", rows: 2 * s.stallRows }],
    settleMs, timeoutMs: ctx.quick ? 60_000 : 300_000,
  };
  let withStall: RunResult | null = null;
  let control: RunResult | null = null;
  try {
    ctx.log(`stall: hub + writing agent A + a stalled and a no-ack receiver; A writes ${s.stallRows} then ${2 * s.stallRows} rows in ${s.batch}-row transactions`);
    withStall = await runStall(ctx, { name: "sl", receivers: true, ...common });
    ctx.log("stall: control, the same without the receivers");
    control = await runStall(ctx, { name: "slc", receivers: false, ...common });
  } catch (e) {
    res.ok = false;
    res.errors.push((e as Error).stack ?? String(e));
  }
  const checks = withStall && control ? stallChecks(withStall, control, { ...BOUNDS, assertMemory: !ctx.quick }) : [];
  for (const c of checks) if (c.asserted && !c.ok) { res.ok = false; res.errors.push(`check failed: ${c.what}`); }
  res.data = { rows: s.stallRows, batch: s.batch, settleMs, rssSampleMs: RSS_SAMPLE_MS, bounds: BOUNDS, withStall, control, checks };
  res.tables.push({
    title: "stalled receivers: hub and writer memory while the backlog grows",
    header: ["run / phase", "rows written", "hub log MiB disk (payload)", "hub RSS start MiB", "peak", "end", "agent A RSS start / peak MiB", "upload s",
      "stalled: changes (batches; buffered)", "no-ack: changes (batches)", "hub log changes"],
    rows: [...(withStall ? tableRows("stall", withStall) : []), ...(control ? tableRows("control", control) : [])],
    notes: [
      `stall run: one tenant, A = real agent writing ${s.batch}-row INSERT transactions; "stalled" and "no-ack" = agent-less SyncStreams from cursor 0 that never Ack (bench/workers/stall.ts). control: a fresh hub, the same writes, no receivers.`,
      `"stalled" stops reading after Welcome (grpc-js stops taking messages off the HTTP/2 stream, so flow control holds the hub back); "buffered" = messages grpc-js held for it unread. "no-ack" reads and counts. Both keep a backlog of every row written.`,
      `each phase ends when A's agent has uploaded everything, plus ${settleMs / 1000} s; RSS (VmRSS) sampled every ${RSS_SAMPLE_MS} ms; hub log = pg_total_relation_size of the tenant's log (payload = sum of stored transaction bytes).`,
      `agent A runs with --max-semi-space-size=${AGENT_SEMI_SPACE_MIB}: V8 otherwise grows its young generation with the allocation rate (up to 16 MiB per semi-space), a bounded step that read as growth with the backlog (17-21 MiB in phase 2 at 200k or 400k rows alike; 2 MiB pinned).`,
      `both hubs run with HEAP_GROWING_PERCENT=${HUB_HEAP_GROWING_PERCENT} (V8's own old-generation growth; the default 300 lets garbage float up to four times the live heap) and --max-semi-space-size=${HUB_SEMI_SPACE_MIB}: the peaks of identical runs moved between 39 and 66 MiB with V8's heap sizing and where a full GC fell, which read as buffering in about one run in three.`,
      `the hub allows ${BOUNDS.window} unacknowledged batches per session (hub/stream/session.ts DEFAULT_LIMITS.downstreamWindow); the stall's memory cost = hub peak RSS growth in the stall run minus the control's.`,
      ...checks.map((c) => (c.asserted ? `${c.ok ? "OK  " : "FAIL"} ${c.what}` : `info (--quick writes too little to tell buffering from churn: not asserted, would ${c.ok ? "pass" : "fail"}) ${c.what}`)),
    ],
  });
  return res;
}
