/**
 * What the stall section asserts, from its measurements alone (no I/O), so
 * each check prints with the figures it was decided on.
 *
 * The hub's RSS grows while it ingests whether or not anyone is stalled
 * (allocator high water, V8 heap sizing), so a stall's cost is measured
 * against a control run: same writes, same hub, no receivers. A hub that
 * kept the backlog for the two receivers would exceed the control by about
 * twice the log payload written, and by more in phase 2 than in phase 1.
 */
import type { RssSpan } from "../lib/rss.ts";

/** A receiver as bench/workers/stall.ts reports it. */
export interface ReceiverStats {
  name: string;
  mode: "stalled" | "noack";
  maxBatchChanges: number;
  reading: boolean;
  batches: number;
  changes: number;
  largestBatch: number;
  cursorOnly: number;
  buffered: number;
  ended: string | null;
}

export interface LogStats { changes: number; payloadBytes: number; diskBytes: number }

export interface PhaseResult {
  phase: string;
  rows: number;
  /** Rows written by the end of this phase. */
  totalRows: number;
  writeS: number;
  /** First statement on A → A's agent has nothing left to upload. */
  uploadS: number;
  /** The tenant log after the phase. */
  log: LogStats;
  addedPayloadBytes: number;
  rss: { hub: RssSpan; agentA: RssSpan };
  receivers: ReceiverStats[];
}

export interface Measured { phases: PhaseResult[]; resumed: ReceiverStats[] | null }

export interface Bounds {
  /** Unacknowledged downstream batches the hub allows a session. */
  window: number;
  /** Most extra peak RSS (MiB) the stall may cost the hub, and most A's agent may grow. */
  growthMiB: number;
  /** The hub's extra peak RSS also stays under this fraction of the log payload written. */
  payloadFraction: number;
  /** Most the hub's extra (A's peak) may rise from the first phase to the last, which writes twice as much. */
  stepMiB: number;
  /** Memory bounds decide ok; otherwise they are shown only (too little data to tell buffering from churn). */
  assertMemory: boolean;
}

export interface Check { what: string; ok: boolean; asserted: boolean }

const MiB = 2 ** 20;
const mib = (b: number) => (b / MiB).toFixed(1);
const n = (x: number) => x.toLocaleString("en-US");

/** Peak RSS over phases 0..i above the RSS when phase 0 started, in bytes. */
function growth(phases: PhaseResult[], proc: "hub" | "agentA", i: number): number {
  const peak = Math.max(...phases.slice(0, i + 1).map((p) => p.rss[proc].peakKb));
  return (peak - phases[0].rss[proc].startKb) * 1024;
}

/** A receiver that never acks took at most the hub's window. */
function windowCheck(label: string, r: ReceiverStats | undefined, window: number): Check {
  if (!r) return { what: `${label}: no report`, ok: false, asserted: true };
  const cap = window * r.maxBatchChanges;
  return {
    what: `${label} got ${n(r.changes)} changes in ${r.batches} batches: > 0, ≤ ${window} batches and ≤ ${window} × ${n(r.maxBatchChanges)} = ${n(cap)} changes, since it never acks`,
    ok: r.changes > 0 && r.batches <= window && r.changes <= cap, asserted: true,
  };
}

function logChecks(run: string, phases: PhaseResult[]): Check[] {
  return phases.map((p) => ({ what: `${run} ${p.phase}: hub log holds ${n(p.log.changes)} changes = ${n(p.totalRows)} rows written`, ok: p.log.changes === p.totalRows, asserted: true }));
}

function memoryChecks(stall: PhaseResult[], control: PhaseResult[], b: Bounds): Check[] {
  const out: Check[] = [];
  const payload = stall.at(-1)!.log.payloadBytes;
  const cost = stall.map((_, i) => growth(stall, "hub", i) - growth(control, "hub", i));
  const cap = Math.min(b.growthMiB * MiB, payload * b.payloadFraction);
  const worst = Math.max(...cost);
  out.push({
    what: `hub: peak RSS growth with the stalled receivers minus the control's, ${stall.map((_, i) => `${mib(growth(stall, "hub", i))} − ${mib(growth(control, "hub", i))}`).join(", ")} MiB per phase; largest ${mib(worst)} MiB < min(${b.growthMiB} MiB, ${b.payloadFraction} × ${mib(payload)} MiB log payload written) = ${mib(cap)} MiB`,
    ok: worst < cap, asserted: b.assertMemory,
  });
  const step = cost.at(-1)! - cost[0];
  out.push({
    what: `hub: that cost after the last phase minus after the first, ${mib(step)} MiB < ${b.stepMiB} MiB (the backlog grew from ${n(stall[0].totalRows)} to ${n(stall.at(-1)!.totalRows)} rows)`,
    ok: step < b.stepMiB * MiB, asserted: b.assertMemory,
  });
  const ga = growth(stall, "agentA", stall.length - 1);
  out.push({ what: `agent A: peak RSS growth over its pre-write baseline ${mib(ga)} MiB < ${b.growthMiB} MiB`, ok: ga < b.growthMiB * MiB, asserted: b.assertMemory });
  const sa = (stall.at(-1)!.rss.agentA.peakKb - stall[0].rss.agentA.peakKb) * 1024;
  out.push({ what: `agent A: peak RSS last phase minus first ${mib(sa)} MiB < ${b.stepMiB} MiB`, ok: sa < b.stepMiB * MiB, asserted: b.assertMemory });
  return out;
}

export function stallChecks(stall: Measured, control: Measured, b: Bounds): Check[] {
  const out: Check[] = [...logChecks("stall run", stall.phases), ...logChecks("control run", control.phases)];
  const last = stall.phases.at(-1);
  if (!last || control.phases.length !== stall.phases.length) return [...out, { what: "every phase of both runs ran", ok: false, asserted: true }];
  for (const r of last.receivers) {
    out.push({ what: `${r.name} receiver still connected after ${last.phase} (the hub kept its session instead of dropping it)`, ok: r.ended === null, asserted: true });
  }
  out.push(windowCheck(`no-ack receiver, after ${last.phase},`, last.receivers.find((r) => r.mode === "noack"), b.window));
  out.push(windowCheck("stalled receiver, once it read again,", stall.resumed?.find((r) => r.mode === "stalled"), b.window));
  out.push(...memoryChecks(stall.phases, control.phases, b));
  return out;
}
