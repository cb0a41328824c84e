/**
 * Transactions a branch could not apply (it NACKed them and applied what
 * came after). Operators retry or discard them; the branch's session
 * passes the request on and records the branch's answer.
 */
import type pg from "pg";
import { StatusError, Status } from "../errors.ts";
import { decodeTxn, type WireChange } from "../../lib/protowire.ts";
import { Op } from "../../gen/branchsync/v1/sync_pb.ts";
import { rowId } from "./rowState.ts";
import { currentRows } from "./images.ts";
import { readHead } from "./log.ts";

export type QuarantineState = "quarantined" | "retry" | "discard" | "applied" | "discarded";

export interface QuarantineRow {
  branchId: string; seq: bigint; originBranch: string; error: string; sqlstate: string;
  status: QuarantineState; createdAt: Date; updatedAt: Date;
}

export async function recordNack(pool: pg.Pool, schema: string, branch: string, n: { seq: bigint; originBranch: string; error: string; sqlstate: string }): Promise<void> {
  await pool.query(
    `INSERT INTO ${schema}.quarantine(branch_id, seq, origin_branch, error, sqlstate, status) VALUES ($1, $2, $3, $4, $5, 'quarantined')
     ON CONFLICT (branch_id, seq) DO UPDATE SET error = excluded.error, sqlstate = excluded.sqlstate, updated_at = now()`,
    [branch, n.seq.toString(), n.originBranch, n.error.slice(0, 2000), n.sqlstate.slice(0, 5)]);
}

/** Whether the branch has anything quarantined that is not settled. */
export async function hasOpenItems(pool: pg.Pool, schema: string, branch: string): Promise<boolean> {
  const { rowCount } = await pool.query(`SELECT 1 FROM ${schema}.quarantine WHERE branch_id = $1 AND status IN ('quarantined', 'retry', 'discard') LIMIT 1`, [branch]);
  return (rowCount ?? 0) > 0;
}

export async function requestedActions(pool: pg.Pool, schema: string, branch: string): Promise<{ seq: bigint; status: "retry" | "discard" }[]> {
  const { rows } = await pool.query(`SELECT seq::text AS seq, status FROM ${schema}.quarantine WHERE branch_id = $1 AND status IN ('retry', 'discard') ORDER BY seq`, [branch]);
  return rows.map((r) => ({ seq: BigInt(r.seq), status: r.status }));
}

export async function settle(pool: pg.Pool, schema: string, branch: string, seq: bigint, status: QuarantineState, error?: string): Promise<void> {
  await pool.query(
    `UPDATE ${schema}.quarantine SET status = $3, error = coalesce($4, error), updated_at = now() WHERE branch_id = $1 AND seq = $2`,
    [branch, seq.toString(), status, error ?? null]);
}

function toRow(r: Record<string, unknown>): QuarantineRow {
  return {
    branchId: r.branch_id as string, seq: BigInt(r.seq as string), originBranch: r.origin_branch as string, error: r.error as string,
    sqlstate: r.sqlstate as string, status: r.status as QuarantineState, createdAt: r.created_at as Date, updatedAt: r.updated_at as Date,
  };
}

export async function listQuarantine(pool: pg.Pool, schema: string, branch: string, status: string): Promise<QuarantineRow[]> {
  const { rows } = await pool.query(
    `SELECT * FROM ${schema}.quarantine WHERE ($1::text IS NULL OR branch_id = $1) AND ($2::text IS NULL OR status = $2) ORDER BY created_at, branch_id, seq`,
    [branch || null, status || null]);
  return rows.map(toRow);
}

/** Operator request: only an item still quarantined (or already requested) can be asked again. */
export async function request(pool: pg.Pool, schema: string, branch: string, seq: bigint, status: "retry" | "discard"): Promise<QuarantineRow> {
  const { rows } = await pool.query(
    `UPDATE ${schema}.quarantine SET status = $3, updated_at = now()
      WHERE branch_id = $1 AND seq = $2 AND status IN ('quarantined', 'retry', 'discard') RETURNING *`,
    [branch, seq.toString(), status]);
  if (rows.length === 0) {
    const { rows: any } = await pool.query(`SELECT status FROM ${schema}.quarantine WHERE branch_id = $1 AND seq = $2`, [branch, seq.toString()]);
    if (any.length === 0) throw new StatusError(Status.NOT_FOUND, `branch "${branch}" has no quarantined transaction ${seq}`);
    throw new StatusError(Status.FAILED_PRECONDITION, `transaction ${seq} at branch "${branch}" is already ${any[0].status}`);
  }
  return toRow(rows[0]);
}

/** The changes (table, key) a logged transaction made, one per row, in order. */
export async function rowsOf(pool: pg.Pool, schema: string, seq: bigint): Promise<WireChange[]> {
  const { rows } = await pool.query(`SELECT body FROM ${schema}.log WHERE seq = $1 ORDER BY part`, [seq.toString()]);
  const byRow = new Map<string, WireChange>();
  for (const r of rows) for (const ch of decodeTxn(r.body, 0, r.body.length).changes) byRow.set(rowId(ch.table, ch.key), ch);
  return [...byRow.values()];
}

/**
 * A retry applies the newest version of every row the transaction touched,
 * not the transaction itself: rows changed since then must not go back.
 * Its seq is the head it was read at, so the agent treats it as that new.
 */
export async function buildRepair(pool: pg.Pool, schema: string, seq: bigint): Promise<{ seq: bigint; changes: WireChange[] }> {
  const touched = await rowsOf(pool, schema, seq);
  const head = await readHead(pool, schema);
  const now = await currentRows(pool, schema, touched);
  const changes: WireChange[] = touched.map((ch) => {
    const row = now.get(rowId(ch.table, ch.key));
    return row
      ? { table: ch.table, op: Op.UPDATE, key: ch.key, row, prev: "" }
      : { table: ch.table, op: Op.DELETE, key: ch.key, row: ch.row, prev: "" };
  });
  return { seq: head, changes };
}
