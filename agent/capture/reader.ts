/**
 * Reads the local change log into upstream transactions: whole transactions
 * while they fit in a batch, and a transaction larger than a batch as
 * numbered chunks of it. Only committed transactions are visible here, and
 * all of a transaction's rows become visible at once.
 */
import type pg from "pg";
import { create } from "@bufbuild/protobuf";
import { TransactionSchema, ChangeSchema, Op, type Transaction } from "../../gen/branchsync/v1/sync_pb.ts";

const OPS: Record<string, Op> = { I: Op.INSERT, U: Op.UPDATE, D: Op.DELETE };

export interface Chunking { txid: string; nextChunk: number; afterId: string }

export interface ReadResult {
  transactions: Transaction[];
  /** Local txids of transactions complete in this batch (their last chunk). */
  complete: string[];
  /** Set when the batch holds a non-final chunk of a large transaction. */
  chunking: Chunking | null;
}

function toChange(r: { tbl: string; op: string; key: string; row: string }) {
  return create(ChangeSchema, { table: r.tbl, op: OPS[r.op], key: r.key, row: r.row });
}

/**
 * Next batch after excluding `inFlight` txids. `chunking` continues a large
 * transaction already partly sent.
 */
export async function readBatch(db: pg.Pool, inFlight: string[], max: number, chunking: Chunking | null): Promise<ReadResult> {
  if (chunking) return readChunk(db, chunking, max);
  const head = await db.query({
    name: "bs-read-txns",
    text: `SELECT txid::text AS txid, n, (extract(epoch FROM started_at) * 1000000)::bigint AS t
             FROM _branchsync.txns WHERE NOT (txid = ANY($1::xid8[])) ORDER BY last_id LIMIT 256`,
    values: [inFlight],
  });
  if (head.rows.length === 0) return { transactions: [], complete: [], chunking: null };
  if (head.rows[0].n > max) {
    return readChunk(db, { txid: head.rows[0].txid, nextChunk: 0, afterId: "0" }, max);
  }
  const picked: { txid: string; t: string }[] = [];
  let total = 0;
  for (const r of head.rows) {
    if (total + r.n > max) break;
    picked.push(r);
    total += r.n;
  }
  const ids = picked.map((p) => p.txid);
  const { rows } = await db.query({
    name: "bs-read-changes",
    text: `SELECT txid::text AS txid, tbl, op, key, row::text AS row FROM _branchsync.changes WHERE txid = ANY($1::xid8[]) ORDER BY id`,
    values: [ids],
  });
  const byTxid = new Map<string, Transaction>();
  for (const p of picked) {
    byTxid.set(p.txid, create(TransactionSchema, { originTxn: BigInt(p.txid), chunkIndex: 0, lastChunk: true, commitTimeUs: BigInt(p.t) }));
  }
  for (const r of rows) byTxid.get(r.txid)!.changes.push(toChange(r));
  return { transactions: [...byTxid.values()], complete: ids, chunking: null };
}

async function readChunk(db: pg.Pool, c: Chunking, max: number): Promise<ReadResult> {
  const { rows } = await db.query({
    name: "bs-read-chunk",
    text: `SELECT id::text AS id, tbl, op, key, row::text AS row,
                  NOT EXISTS (SELECT 1 FROM _branchsync.changes c2 WHERE c2.txid = $1::xid8 AND c2.id > c.id) AS last
             FROM _branchsync.changes c WHERE c.txid = $1::xid8 AND c.id > $2::bigint ORDER BY c.id LIMIT $3`,
    values: [c.txid, c.afterId, max],
  });
  if (rows.length === 0) return { transactions: [], complete: [], chunking: null };
  const last = rows[rows.length - 1].last as boolean;
  const t = create(TransactionSchema, {
    originTxn: BigInt(c.txid), chunkIndex: c.nextChunk, lastChunk: last, changes: rows.map(toChange),
  });
  return {
    transactions: [t],
    complete: last ? [c.txid] : [],
    chunking: last ? null : { txid: c.txid, nextChunk: c.nextChunk + 1, afterId: rows[rows.length - 1].id },
  };
}

/** Forgets transactions the hub holds durably. */
export async function forget(db: pg.Pool, txids: string[]): Promise<void> {
  if (txids.length === 0) return;
  await db.query({
    name: "bs-forget",
    text: `WITH t AS (DELETE FROM _branchsync.txns WHERE txid = ANY($1::xid8[]))
           DELETE FROM _branchsync.changes WHERE txid = ANY($1::xid8[])`,
    values: [txids],
  });
}

/** Moves a transaction the hub rejected aside, whole, with the reason. */
export async function setAside(db: pg.Pool, txid: string, error: string): Promise<void> {
  await db.query(
    `WITH moved AS (DELETE FROM _branchsync.changes WHERE txid = $1::xid8 RETURNING txid, tbl, op, key, row),
          t AS (DELETE FROM _branchsync.txns WHERE txid = $1::xid8)
     INSERT INTO _branchsync.rejected(txid, tbl, op, key, row, error) SELECT txid, tbl, op, key, row, $2 FROM moved`,
    [txid, error]);
}
