/** `branchsync admin policy|conflicts|quarantine ...`: table policies, the conflict ledger and the quarantine. */
import type { Client } from "@connectrpc/connect";
import {
  AdminService, ConflictStrategy, ConflictStatus, QuarantineStatus, Resolution, type Conflict, type TablePolicy,
} from "../gen/branchsync/v1/admin_pb.ts";
import { ConfigError } from "../lib/config.ts";

const STRATEGIES: Record<string, ConflictStrategy> = {
  "last-writer-wins": ConflictStrategy.LAST_WRITER_WINS, "branch-priority": ConflictStrategy.BRANCH_PRIORITY,
  "column-merge": ConflictStrategy.COLUMN_MERGE, manual: ConflictStrategy.MANUAL,
};
const CONFLICT_STATUS: Record<string, ConflictStatus> = {
  resolved: ConflictStatus.RESOLVED, open: ConflictStatus.OPEN, "resolved-manually": ConflictStatus.RESOLVED_MANUALLY,
};
const QUARANTINE_STATUS: Record<string, QuarantineStatus> = {
  quarantined: QuarantineStatus.QUARANTINED, retry: QuarantineStatus.RETRY_REQUESTED, discard: QuarantineStatus.DISCARD_REQUESTED,
  applied: QuarantineStatus.APPLIED, discarded: QuarantineStatus.DISCARDED,
};
const TAKE: Record<string, Resolution> = { existing: Resolution.EXISTING, incoming: Resolution.INCOMING, row: Resolution.ROW };

const nameOf = (m: Record<string, number>, v: number) => Object.entries(m).find(([, n]) => n === v)?.[0] ?? "?";
const pick = <T>(m: Record<string, T>, v: string | undefined, what: string): T | undefined => {
  if (v === undefined) return undefined;
  if (!(v in m)) throw new ConfigError(`--${what} must be one of ${Object.keys(m).join(", ")}, got "${v}"`);
  return m[v];
};
const csv = (v: string | undefined) => (v ? v.split(",").map((s) => s.trim()).filter(Boolean) : []);
const big = (v: string, what: string) => { if (!/^\d+$/.test(v)) throw new ConfigError(`${what} must be a number, got "${v}"`); return BigInt(v); };
const date = (s: bigint) => (s ? new Date(Number(s) * 1000).toISOString() : "-");

const policyLine = (p: TablePolicy) =>
  `${p.table}\t${nameOf(STRATEGIES, p.strategy)}\t${p.branchPriority.join(",") || "-"}\t${p.deltaColumns.join(",") || "-"}`;

function conflictText(c: Conflict): string {
  return [
    `conflict ${c.id}  ${c.table} ${c.key}  ${c.kind}  ${nameOf(CONFLICT_STATUS, c.status)}`,
    `  strategy  ${c.strategy}: ${c.reason}`,
    `  existing  ${c.existingBranch}: ${c.existingRow || "(deleted)"}`,
    `  incoming  ${c.incomingBranch} (seq ${c.seq}): ${c.incomingRow || "(delete)"}`,
    `  result    ${c.winnerBranch ? `${c.winnerBranch} won` : "merged"}: ${c.resultRow || "(deleted)"}`,
    `  detected  ${date(c.createdAt)}${c.resolvedAt ? `, resolved ${date(c.resolvedAt)} as seq ${c.resolutionSeq}` : ""}`,
  ].join("\n");
}

export async function runConflictAdmin(client: Client<typeof AdminService>, positional: string[], flags: Map<string, string>,
  need: (v: string | undefined, what: string) => string, out: (s: string) => void): Promise<boolean> {
  const [noun, verb, a, b, c] = positional;
  const f = (k: string) => flags.get(k);
  if (noun === "policy" && verb === "set") {
    const strategy = pick(STRATEGIES, need(f("strategy"), "--strategy"), "strategy")!;
    const r = await client.setTablePolicy({ tenantId: need(a, "<tenant-id>"), policy: {
      table: need(b, "<schema.table>"), strategy, branchPriority: csv(f("priority")), deltaColumns: csv(f("delta")),
    } });
    out(`policy of ${policyLine(r.policy!)}`);
  } else if (noun === "policy" && verb === "list") {
    const r = await client.listTablePolicies({ tenantId: need(a, "<tenant-id>") });
    out(["TABLE\tSTRATEGY\tPRIORITY\tDELTA", ...r.policies.map(policyLine)].join("\n"));
  } else if (noun === "conflicts" && verb === "list") {
    const limit = f("limit") ? Number(big(f("limit")!, "--limit")) : 0;
    const r = await client.listConflicts({ tenantId: need(a, "<tenant-id>"), table: f("table") ?? "", status: pick(CONFLICT_STATUS, f("status"), "status"), limit });
    out(["ID\tSTATUS\tTABLE\tKEY\tKIND\tSTRATEGY\tWINNER\tDETECTED",
      ...r.conflicts.map((x) => `${x.id}\t${nameOf(CONFLICT_STATUS, x.status)}\t${x.table}\t${x.key}\t${x.kind}\t${x.strategy}\t${x.winnerBranch || "(merged)"}\t${date(x.createdAt)}`)].join("\n"));
  } else if (noun === "conflicts" && verb === "show") {
    const r = await client.getConflict({ tenantId: need(a, "<tenant-id>"), id: big(need(b, "<conflict-id>"), "<conflict-id>") });
    out(conflictText(r.conflict!));
  } else if (noun === "conflicts" && verb === "resolve") {
    const take = pick(TAKE, need(f("take"), "--take"), "take")!;
    const r = await client.resolveConflict({ tenantId: need(a, "<tenant-id>"), id: big(need(b, "<conflict-id>"), "<conflict-id>"), resolution: take, row: f("row") ?? "" });
    out(conflictText(r.conflict!));
  } else if (noun === "quarantine" && verb === "list") {
    const r = await client.listQuarantined({ tenantId: need(a, "<tenant-id>"), branchId: f("branch") ?? "", status: pick(QUARANTINE_STATUS, f("status"), "status") });
    out(["BRANCH\tSEQ\tSTATUS\tORIGIN\tSQLSTATE\tERROR\tROWS",
      ...r.items.map((q) => `${q.branchId}\t${q.seq}\t${nameOf(QUARANTINE_STATUS, q.status)}\t${q.originBranch}\t${q.sqlstate}\t${q.error}\t${q.rows.join("; ")}`)].join("\n"));
  } else if (noun === "quarantine" && (verb === "retry" || verb === "discard")) {
    const req = { tenantId: need(a, "<tenant-id>"), branchId: need(b, "<branch-id>"), seq: big(need(c, "<seq>"), "<seq>") };
    const r = verb === "retry" ? await client.retryQuarantined(req) : await client.discardQuarantined(req);
    out(`${verb} requested for seq ${r.item!.seq} at ${r.item!.branchId}; the branch acts on it once connected (see quarantine list)`);
  } else {
    return false;
  }
  return true;
}
