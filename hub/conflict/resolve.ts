/**
 * Conflict detection and resolution for one row change, as plain data in
 * and out (no I/O), so every rule here is testable on its own.
 *
 * Detection is exact given the hub's total order. A change made at branch
 * X carries base_seq: the tenant position X had applied when it wrote. X
 * then knew the log up to base_seq plus its own writes, so the change is
 * concurrent with the row's current version exactly when that version is
 * newer than base_seq and is not X's own unmodified write, or when X lost
 * a conflict to that version at a seq newer than base_seq (RowVersion.lost). Edits made one
 * after the other at different branches never conflict; insert/insert,
 * update/update, update/delete and delete/update made without knowledge of
 * each other always do.
 *
 * Resolution keeps values as raw JSON text (lib/jsonobject.ts): numbers
 * are exact decimal literals and must not round through a JS number.
 */
import { splitJsonObject, joinJsonObject } from "../../lib/jsonobject.ts";
import { addDelta } from "../../lib/decimal.ts";

export type Strategy = "last-writer-wins" | "branch-priority" | "column-merge" | "manual";
export const STRATEGIES: Strategy[] = ["last-writer-wins", "branch-priority", "column-merge", "manual"];

export interface Policy {
  strategy: Strategy;
  /** branch-priority: highest first; unlisted branches rank after all listed. */
  branchPriority: string[];
  /** Counter columns: concurrent changes add up under every strategy except manual. */
  deltaColumns: string[];
}

export const DEFAULT_POLICY: Policy = { strategy: "last-writer-wins", branchPriority: [], deltaColumns: [] };

/** "I" insert, "U" update, "D" delete (a tombstone). */
export type RowOp = "I" | "U" | "D";

/** A column's last writer, for column-merge: [seq, hlc, branch] (numbers as strings for jsonb). */
export type ColVersion = [string, string, string];

/** The hub's newest version of a row. */
export interface RowVersion {
  op: RowOp;
  seq: bigint;
  /** Branch that wrote it, or that won its last conflict (tie-break and priority). */
  branch: string;
  /** True when the row is exactly what `branch` wrote (not a merge or a lost conflict's rewrite). */
  exact: boolean;
  hlc: bigint;
  cols: Record<string, ColVersion> | null;
  /**
   * Branches whose change lost to this version (a conflict kept the row),
   * with the sequence number of that decision. Until such a branch applied
   * the decision its row is its own losing write, so its changes based
   * before that seq are concurrent with this version.
   */
  lost?: Record<string, string> | null;
}

export interface IncomingChange {
  op: RowOp;
  /** Full row image (the old row for a delete). */
  row: string;
  /** Update only: changed columns -> [old value] as JSON text; "" = every column changed. */
  prev: string;
  branch: string;
  hlc: bigint;
  base: bigint;
  seq: bigint;
}

export interface Verdict {
  /** The row afterwards: null = deleted. */
  result: string | null;
  /** The row's new version (unchanged when the existing version stands). */
  state: RowVersion;
  /** Set when the change was concurrent with the existing version. */
  conflict: {
    kind: string;
    winner: string;
    loser: string;
    reason: string;
    status: "resolved" | "open";
  } | null;
}

const OP_NAMES: Record<RowOp, string> = { I: "insert", U: "update", D: "delete" };

export function concurrent(st: RowVersion | undefined, inc: Pick<IncomingChange, "base" | "branch">): st is RowVersion {
  if (st === undefined) return false;
  if (st.seq > inc.base && !(st.exact && st.branch === inc.branch)) return true;
  const lost = st.lost?.[inc.branch];
  return lost !== undefined && BigInt(lost) > inc.base;
}

/** Whether (hlcA, branchA) is later than (hlcB, branchB): HLC first, then branch id. */
function later(hlcA: bigint, branchA: string, hlcB: bigint, branchB: string): boolean {
  return hlcA !== hlcB ? hlcA > hlcB : branchA > branchB;
}

function rank(policy: Policy, branch: string): number {
  const i = policy.branchPriority.indexOf(branch);
  return i < 0 ? policy.branchPriority.length : i;
}

/** The columns an incoming change wrote, with their old values where known. */
function changedColumns(inc: IncomingChange, row: Map<string, string>): Map<string, string | null> {
  const out = new Map<string, string | null>();
  if (inc.op === "U" && inc.prev !== "") {
    for (const [c, old] of splitJsonObject(inc.prev)) out.set(c, old.slice(1, -1).trim());
  } else {
    for (const c of row.keys()) out.set(c, null);
  }
  return out;
}

function columnVersions(inc: IncomingChange, previous: Record<string, ColVersion> | null, changed: Iterable<string>): Record<string, ColVersion> {
  const cols = { ...(previous ?? {}) };
  for (const c of changed) cols[c] = [inc.seq.toString(), inc.hlc.toString(), inc.branch];
  return cols;
}

/** Applies a change that is not in conflict. */
function accept(inc: IncomingChange, st: RowVersion | undefined, trackColumns: boolean): Verdict {
  let cols: Record<string, ColVersion> | null = null;
  if (trackColumns && inc.op !== "D") {
    const row = splitJsonObject(inc.row);
    cols = columnVersions(inc, inc.op === "U" && st?.op !== "D" ? st?.cols ?? null : null, changedColumns(inc, row).keys());
  }
  return {
    result: inc.op === "D" ? null : inc.row,
    state: { op: inc.op, seq: inc.seq, branch: inc.branch, exact: true, hlc: inc.hlc, cols },
    conflict: null,
  };
}

/**
 * Decides the row after `inc`, given the existing version `st` and its
 * image (`existing`, null if deleted or unknown).
 */
export function resolve(policy: Policy, st: RowVersion | undefined, existing: string | null, inc: IncomingChange): Verdict {
  const trackColumns = policy.strategy === "column-merge";
  // Two deletes agree; nothing to decide or record.
  if (!concurrent(st, inc) || (st.op === "D" && inc.op === "D")) return accept(inc, st, trackColumns);
  const kind = `${OP_NAMES[st.op]}/${OP_NAMES[inc.op]}`;
  const incomingLater = later(inc.hlc, inc.branch, st.hlc, st.branch);
  const lwwReason = (win: boolean) => `${win ? "incoming" : "existing"} change has the later hybrid logical clock${inc.hlc === st.hlc ? " (equal clocks: larger branch id)" : ""}`;
  // The row and its version stay, but the loser is remembered: it skipped
  // incoming versions of this row while its change was pending, so until
  // it applies this entry its row is its own losing write, whatever its
  // cursor says. Its next change based before this seq must meet a
  // concurrent version (and add its delta, or merge only the columns it
  // changed), not overwrite the row whole. Other branches are unaffected.
  const keep = (reason: string, status: "resolved" | "open" = "resolved"): Verdict => ({
    result: st.op === "D" ? null : existing,
    state: { ...st, lost: { ...(st.lost ?? {}), [inc.branch]: inc.seq.toString() } },
    conflict: { kind, winner: st.branch, loser: inc.branch, reason, status },
  });
  const take = (reason: string): Verdict => {
    const v = accept(inc, st, trackColumns);
    return { ...v, conflict: { kind, winner: inc.branch, loser: st.branch, reason, status: "resolved" } };
  };

  if (policy.strategy === "manual") return keep("manual strategy: the row keeps its current version until an operator resolves the conflict", "open");

  let incomingWins = incomingLater;
  let reason = lwwReason(incomingLater);
  if (policy.strategy === "branch-priority") {
    const ri = rank(policy, inc.branch);
    const re = rank(policy, st.branch);
    if (ri !== re) {
      incomingWins = ri < re;
      reason = `branch priority: ${incomingWins ? inc.branch : st.branch} ranks above ${incomingWins ? st.branch : inc.branch}`;
    } else reason = `branch priority: equal rank, so ${reason}`;
  }
  // A delete on either side is decided for the whole row.
  if (st.op === "D" || inc.op === "D" || existing === null) return incomingWins ? take(reason) : keep(reason);

  const ex = splitJsonObject(existing);
  const inRow = splitJsonObject(inc.row);
  const changed = changedColumns(inc, inRow);
  const out = new Map<string, string>();
  const fromIncoming = new Set<string>();
  const notes: string[] = [];
  for (const [c, exValue] of ex) {
    const incValue = inRow.get(c) ?? exValue;
    let v: string;
    if (policy.deltaColumns.includes(c)) {
      // A counter keeps every branch's change: current value plus this delta.
      const old = changed.get(c);
      const sum = changed.has(c) && old != null ? addDelta(exValue, incValue, old) : null;
      v = changed.has(c) ? sum ?? (incomingWins ? incValue : exValue) : exValue;
      if (sum !== null) notes.push(`${c} = ${exValue} + (${incValue} - ${old})`);
    } else if (policy.strategy === "column-merge") {
      if (!changed.has(c)) v = exValue;
      else {
        const cv = st.cols?.[c] ?? [st.seq.toString(), st.hlc.toString(), st.branch];
        const colConcurrent = BigInt(cv[0]) > inc.base && cv[2] !== inc.branch;
        v = !colConcurrent || later(inc.hlc, inc.branch, BigInt(cv[1]), cv[2]) ? incValue : exValue;
      }
    } else {
      v = incomingWins ? incValue : exValue;
    }
    out.set(c, v);
    if (v === incValue && incValue !== exValue) fromIncoming.add(c);
  }
  const differsFromIncoming = [...out].some(([c, v]) => v !== (inRow.get(c) ?? v));
  const differsFromExisting = fromIncoming.size > 0 || [...out].some(([c, v]) => v !== ex.get(c));
  if (policy.strategy === "column-merge") {
    reason = `column merge: ${fromIncoming.size > 0 ? `${[...fromIncoming].join(", ")} from ${inc.branch}` : `nothing from ${inc.branch}`}`
      + ", other columns kept (per column: the later hybrid logical clock wins)";
  }
  if (notes.length > 0) reason += `; counters add up: ${notes.join(", ")}`;
  if (!differsFromIncoming) return take(reason);
  if (!differsFromExisting) return keep(reason);
  const cols: Record<string, ColVersion> = { ...(st.cols ?? {}) };
  for (const c of fromIncoming) cols[c] = [inc.seq.toString(), inc.hlc.toString(), inc.branch];
  return {
    result: joinJsonObject(out),
    state: {
      op: "U", seq: inc.seq, branch: incomingWins ? inc.branch : st.branch, exact: false,
      hlc: inc.hlc > st.hlc ? inc.hlc : st.hlc, cols: trackColumns ? cols : null,
    },
    conflict: { kind, winner: "", loser: "", reason: `merged: ${reason}`, status: "resolved" },
  };
}
