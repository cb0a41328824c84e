/**
 * The conflict ledger: every pair of concurrent changes to one row, how it
 * was decided, and for manual tables the operator's resolution.
 */
import type pg from "pg";
import { StatusError, Status } from "../errors.ts";

export interface ConflictRecord {
  id?: bigint;
  seq: bigint;
  table: string;
  key: string;
  kind: string;
  strategy: string;
  existingBranch: string;
  incomingBranch: string;
  existingRow: string | null;
  incomingRow: string | null;
  resultRow: string | null;
  winnerBranch: string;
  loserBranch: string;
  reason: string;
  status: "resolved" | "open" | "resolved-manually";
  createdAt?: Date;
  resolvedAt?: Date | null;
  resolutionSeq?: bigint | null;
}

export async function insertConflicts(c: pg.ClientBase, schema: string, rs: ConflictRecord[]): Promise<void> {
  if (rs.length === 0) return;
  const col = <K extends keyof ConflictRecord>(k: K) => rs.map((r) => (typeof r[k] === "bigint" ? String(r[k]) : r[k]));
  await c.query(
    `INSERT INTO ${schema}.conflicts(seq, tbl, key, kind, strategy, existing_branch, incoming_branch, existing_row, incoming_row,
                                     result_row, winner_branch, loser_branch, reason, status)
     SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[],
                          $10::text[], $11::text[], $12::text[], $13::text[], $14::text[])`,
    [col("seq"), col("table"), col("key"), col("kind"), col("strategy"), col("existingBranch"), col("incomingBranch"), col("existingRow"),
      col("incomingRow"), col("resultRow"), col("winnerBranch"), col("loserBranch"), col("reason"), col("status")]);
}

const SELECT = `SELECT id, seq, tbl, key, kind, strategy, existing_branch, incoming_branch, existing_row, incoming_row, result_row,
                       winner_branch, loser_branch, reason, status, created_at, resolved_at, resolution_seq`;

function toRecord(r: Record<string, unknown>): ConflictRecord {
  return {
    id: BigInt(r.id as string), seq: BigInt(r.seq as string), table: r.tbl as string, key: r.key as string, kind: r.kind as string,
    strategy: r.strategy as string, existingBranch: r.existing_branch as string, incomingBranch: r.incoming_branch as string,
    existingRow: r.existing_row as string | null, incomingRow: r.incoming_row as string | null, resultRow: r.result_row as string | null,
    winnerBranch: r.winner_branch as string, loserBranch: r.loser_branch as string, reason: r.reason as string,
    status: r.status as ConflictRecord["status"], createdAt: r.created_at as Date, resolvedAt: r.resolved_at as Date | null,
    resolutionSeq: r.resolution_seq == null ? null : BigInt(r.resolution_seq as string),
  };
}

export async function listConflicts(pool: pg.Pool, schema: string, f: { table?: string; status?: string; limit: number; beforeId?: bigint }): Promise<ConflictRecord[]> {
  const { rows } = await pool.query(
    `${SELECT} FROM ${schema}.conflicts
      WHERE ($1::text IS NULL OR tbl = $1) AND ($2::text IS NULL OR status = $2) AND ($3::bigint IS NULL OR id < $3)
      ORDER BY id DESC LIMIT $4`,
    [f.table || null, f.status || null, f.beforeId ? f.beforeId.toString() : null, f.limit]);
  return rows.map(toRecord);
}

export async function getConflict(db: pg.Pool | pg.ClientBase, schema: string, id: bigint, forUpdate = false): Promise<ConflictRecord> {
  const { rows } = await db.query(`${SELECT} FROM ${schema}.conflicts WHERE id = $1${forUpdate ? " FOR UPDATE" : ""}`, [id.toString()]);
  if (rows.length === 0) throw new StatusError(Status.NOT_FOUND, `conflict ${id} does not exist in this tenant`);
  return toRecord(rows[0]);
}

/** Conflicts decided in these log entries that a branch should hear about. */
export async function noticesFor(pool: pg.Pool, schema: string, branch: string, seqs: bigint[]): Promise<ConflictRecord[]> {
  const { rows } = await pool.query(
    `${SELECT} FROM ${schema}.conflicts WHERE seq = ANY($1::bigint[])
        AND (loser_branch = $2 OR (loser_branch = '' AND $2 IN (incoming_branch, existing_branch))) ORDER BY id`,
    [seqs.map(String), branch]);
  return rows.map(toRecord);
}
