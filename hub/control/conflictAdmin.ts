/**
 * AdminService's conflict side: table policies, the conflict ledger and
 * the quarantine. Plain functions from requests to responses; server.ts
 * adds the admin check and error mapping.
 */
import type pg from "pg";
import type { MessageInitShape } from "@bufbuild/protobuf";
import {
  ConflictStrategy, ConflictStatus, QuarantineStatus, Resolution, type TablePolicy,
  type ConflictSchema, type QuarantinedSchema, type TablePolicySchema,
} from "../../gen/branchsync/v1/admin_pb.ts";
import { tenantSchema, tenantExists } from "../store/tenants.ts";
import { ensureTenantCurrent } from "../store/migrate.ts";
import { listPolicies, setPolicy, type TablePolicyRow } from "../store/policies.ts";
import { listConflicts, getConflict, type ConflictRecord } from "../store/conflicts.ts";
import { listQuarantine, request, rowsOf, type QuarantineRow, type QuarantineState } from "../store/quarantine.ts";
import { resolveManually, type Choice } from "../conflict/manual.ts";
import type { Strategy } from "../conflict/resolve.ts";
import { StatusError, Status } from "../errors.ts";

const STRATEGY_NAMES: Record<number, Strategy> = {
  [ConflictStrategy.UNSPECIFIED]: "last-writer-wins",
  [ConflictStrategy.LAST_WRITER_WINS]: "last-writer-wins",
  [ConflictStrategy.BRANCH_PRIORITY]: "branch-priority",
  [ConflictStrategy.COLUMN_MERGE]: "column-merge",
  [ConflictStrategy.MANUAL]: "manual",
};
const STRATEGY_ENUM = Object.fromEntries(Object.entries(STRATEGY_NAMES).slice(1).map(([k, v]) => [v, Number(k)])) as Record<Strategy, ConflictStrategy>;

const CONFLICT_STATUS: Record<string, ConflictStatus> = {
  resolved: ConflictStatus.RESOLVED, open: ConflictStatus.OPEN, "resolved-manually": ConflictStatus.RESOLVED_MANUALLY,
};
const QUARANTINE_STATUS: Record<QuarantineState, QuarantineStatus> = {
  quarantined: QuarantineStatus.QUARANTINED, retry: QuarantineStatus.RETRY_REQUESTED, discard: QuarantineStatus.DISCARD_REQUESTED,
  applied: QuarantineStatus.APPLIED, discarded: QuarantineStatus.DISCARDED,
};
const nameOf = <T extends string>(m: Record<T, number>, v: number) => (Object.entries(m) as [T, number][]).find(([, n]) => n === v)?.[0];
const secs = (d: Date | null | undefined) => (d ? BigInt(Math.floor(d.getTime() / 1000)) : 0n);

async function schemaOf(pool: pg.Pool, tenantId: string): Promise<string> {
  const s = tenantSchema(tenantId);
  if (!(await tenantExists(pool, tenantId))) throw new StatusError(Status.NOT_FOUND, `tenant "${tenantId}" does not exist`);
  // A replica on older code may have created it (rolling upgrade), and no
  // branch may have said Hello here since.
  await ensureTenantCurrent(pool, tenantId);
  return s;
}

const policyOut = (p: TablePolicyRow): MessageInitShape<typeof TablePolicySchema> => ({
  table: p.table, strategy: STRATEGY_ENUM[p.strategy], branchPriority: p.branchPriority, deltaColumns: p.deltaColumns,
});

export function conflictOut(c: ConflictRecord): MessageInitShape<typeof ConflictSchema> {
  return {
    id: c.id, table: c.table, key: c.key, kind: c.kind, strategy: c.strategy, seq: c.seq, existingBranch: c.existingBranch,
    incomingBranch: c.incomingBranch, existingRow: c.existingRow ?? "", incomingRow: c.incomingRow ?? "", resultRow: c.resultRow ?? "",
    winnerBranch: c.winnerBranch, reason: c.reason, status: CONFLICT_STATUS[c.status], createdAt: secs(c.createdAt),
    resolvedAt: secs(c.resolvedAt), resolutionSeq: c.resolutionSeq ?? 0n,
  };
}

async function quarantinedOut(pool: pg.Pool, schema: string, q: QuarantineRow): Promise<MessageInitShape<typeof QuarantinedSchema>> {
  const rows = (await rowsOf(pool, schema, q.seq)).map((ch) => `${ch.table} ${ch.key}`);
  return {
    branchId: q.branchId, seq: q.seq, originBranch: q.originBranch, error: q.error, sqlstate: q.sqlstate,
    status: QUARANTINE_STATUS[q.status], createdAt: secs(q.createdAt), updatedAt: secs(q.updatedAt), rows,
  };
}

export function makeConflictAdmin(pool: pg.Pool, onAppend: (tenantId: string, head: bigint) => void) {
  return {
    async setTablePolicy(tenantId: string, p: TablePolicy | undefined) {
      if (!p?.table) throw new StatusError(Status.INVALID_ARGUMENT, "policy.table is required");
      const stored = await setPolicy(pool, await schemaOf(pool, tenantId), {
        table: p.table, strategy: STRATEGY_NAMES[p.strategy] ?? "last-writer-wins", branchPriority: p.branchPriority, deltaColumns: p.deltaColumns,
      });
      return { policy: policyOut(stored) };
    },
    async listTablePolicies(tenantId: string) {
      return { policies: (await listPolicies(pool, await schemaOf(pool, tenantId))).map(policyOut) };
    },
    async listConflicts(tenantId: string, table: string, status: ConflictStatus, limit: number, beforeId: bigint) {
      const rows = await listConflicts(pool, await schemaOf(pool, tenantId), {
        table, status: status ? nameOf(CONFLICT_STATUS, status) : undefined, limit: Math.min(limit || 100, 1000), beforeId,
      });
      return { conflicts: rows.map(conflictOut) };
    },
    async getConflict(tenantId: string, id: bigint) {
      return { conflict: conflictOut(await getConflict(pool, await schemaOf(pool, tenantId), id)) };
    },
    async resolveConflict(tenantId: string, id: bigint, resolution: Resolution, row: string) {
      const choice: Choice | undefined = resolution === Resolution.EXISTING ? "existing" : resolution === Resolution.INCOMING ? "incoming"
        : resolution === Resolution.ROW ? "row" : undefined;
      if (!choice) throw new StatusError(Status.INVALID_ARGUMENT, "resolution must be EXISTING, INCOMING or ROW");
      if (choice === "row" && !row) throw new StatusError(Status.INVALID_ARGUMENT, "RESOLUTION_ROW needs the row (a JSON object of every column)");
      const r = await resolveManually(pool, await schemaOf(pool, tenantId), id, choice, row);
      onAppend(tenantId, r.head);
      return { conflict: conflictOut(r.conflict) };
    },
    async listQuarantined(tenantId: string, branchId: string, status: QuarantineStatus) {
      const schema = await schemaOf(pool, tenantId);
      const rows = await listQuarantine(pool, schema, branchId, status ? nameOf(QUARANTINE_STATUS, status) ?? "" : "");
      return { items: await Promise.all(rows.map((q) => quarantinedOut(pool, schema, q))) };
    },
    async requestQuarantine(tenantId: string, branchId: string, seq: bigint, what: "retry" | "discard") {
      const schema = await schemaOf(pool, tenantId);
      return { item: await quarantinedOut(pool, schema, await request(pool, schema, branchId, seq, what)) };
    },
  };
}
