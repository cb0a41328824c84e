/**
 * An operator's resolution of an open conflict: the chosen row enters the
 * tenant log as a new transaction of the pseudo-branch OPERATOR (not a
 * valid branch id, so it can never be a real branch's), sequenced after
 * everything, so every branch applies it like any change. The conflict id
 * is its origin_txn: resolving twice appends once.
 */
import type pg from "pg";
import { create, toBinary } from "@bufbuild/protobuf";
import { Op, TransactionSchema } from "../../gen/branchsync/v1/sync_pb.ts";
import { StatusError, Status } from "../errors.ts";
import { getConflict, type ConflictRecord } from "../store/conflicts.ts";
import { appendBatch, readHead } from "../store/log.ts";
import { loadPolicies } from "../store/policies.ts";
import { rowId } from "../store/rowState.ts";
import { currentRows } from "../store/images.ts";
import { checkTransaction } from "../stream/validate.ts";
import type { TableDef } from "../store/tables.ts";
import { splitJsonObject } from "../../lib/jsonobject.ts";
import { hlcOf } from "../../lib/hlc.ts";

export const OPERATOR = "_operator";

export type Choice = "existing" | "incoming" | "row";

async function currentRow(pool: pg.Pool, schema: string, c: ConflictRecord): Promise<string | null> {
  return (await currentRows(pool, schema, [{ table: c.table, key: c.key }])).get(rowId(c.table, c.key)) ?? null;
}

async function tableDef(pool: pg.Pool, schema: string, table: string): Promise<TableDef> {
  const { rows } = await pool.query(`SELECT definition FROM ${schema}.tables WHERE name = $1`, [table]);
  if (rows.length === 0) throw new StatusError(Status.FAILED_PRECONDITION, `table ${table} is no longer registered`);
  return rows[0].definition as TableDef;
}

/** The key text of a row image, as capture writes it ([v1, v2]). */
function keyOf(def: TableDef, row: string): string {
  let m: Map<string, string>;
  try { m = splitJsonObject(row); } catch { throw new StatusError(Status.INVALID_ARGUMENT, "row is not a JSON object"); }
  return `[${def.primaryKey.map((k) => m.get(k) ?? "null").join(", ")}]`;
}

export async function resolveManually(pool: pg.Pool, schema: string, id: bigint, choice: Choice, givenRow: string): Promise<{ conflict: ConflictRecord; head: bigint }> {
  const c = await getConflict(pool, schema, id);
  if (c.status !== "open") {
    throw new StatusError(Status.FAILED_PRECONDITION, `conflict ${id} is ${c.status}, not open; only conflicts of manual tables wait for an operator`);
  }
  const def = await tableDef(pool, schema, c.table);
  let row: string | null;
  if (choice === "existing") row = await currentRow(pool, schema, c);
  else if (choice === "incoming") row = c.incomingRow;
  else {
    row = givenRow;
    if (keyOf(def, row) !== c.key) throw new StatusError(Status.INVALID_ARGUMENT, `the row's primary key must be the conflict's, ${c.key}`);
  }
  const change = row === null
    ? { table: c.table, op: Op.DELETE, key: c.key, row: c.existingRow ?? c.incomingRow ?? "{}", prev: "" }
    : { table: c.table, op: Op.UPDATE, key: c.key, row, prev: "" };
  const head = await readHead(pool, schema);
  const txn = create(TransactionSchema, { originTxn: id, originBranch: OPERATOR, lastChunk: true, changes: [change], baseSeq: head, hlc: hlcOf(Date.now()) });
  const err = checkTransaction(txn, new Map([[c.table, def]]));
  if (err) throw new StatusError(Status.INVALID_ARGUMENT, `the resolution is not a valid row: ${err.replace(/^transaction \d+ change 0: /, "")}`);
  const res = await appendBatch(pool, schema, OPERATOR, [{
    originTxn: id, chunkIndex: 0, lastChunk: true, nChanges: 1, body: toBinary(TransactionSchema, txn),
    changes: [change], baseSeq: head, hlc: txn.hlc,
  }], await loadPolicies(pool, schema));
  const o = res.outcomes[0];
  if (o.kind !== "accepted" && o.kind !== "duplicate") throw new StatusError(Status.INTERNAL, "the resolution could not be stored");
  await pool.query(
    `UPDATE ${schema}.conflicts SET status = 'resolved-manually', resolved_at = now(), resolution_seq = $2, result_row = $3 WHERE id = $1 AND status = 'open'`,
    [id.toString(), o.seq.toString(), row]);
  return { conflict: await getConflict(pool, schema, id), head: res.head };
}
