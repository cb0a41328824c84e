/**
 * Reads the local change log into upstream transactions: whole transactions
 * while they fit in a batch, and a transaction larger than a batch as
 * numbered chunks of it. Only committed transactions are visible here, and
 * all of a transaction's rows become visible at once.
 */
import type pg from "pg";
import { Op } from "../../gen/branchsync/v1/sync_pb.ts";
import type { WireChange, WireTxn } from "../../lib/protowire.ts";
import { splitJsonArray } from "../../lib/jsonsplit.ts";
import { unitKeys, unitRows } from "./units.ts";
import type { Clock } from "./clock.ts";

const OPS: Record<string, Op> = { I: Op.INSERT, U: Op.UPDATE, D: Op.DELETE };

/**
 * A large transaction partly sent: the next chunk starts after unit
 * `afterUnit`, leaving out the first `skipRows` rows of the unit it starts
 * in (a unit of big rows can be more than a message holds).
 */
export interface Chunking { txid: string; nextChunk: number; afterUnit: string; skipRows: number }

/**
 * Most characters of keys, rows and prevs one batch carries. UTF-8 takes at
 * most 3 bytes for each, so a batch stays under gRPC's 4 MiB message
 * (lib/wire.ts) however its text is made; packing by change count alone
 * sent 250 rows of 20 KB as one 5 MB message, refused every time.
 */
export const BATCH_CHARS = 1024 * 1024;

const charsOf = (ch: WireChange) => ch.key.length + ch.row.length + ch.prev.length + ch.table.length + 16;

export interface ReadResult {
  /** Plain objects for lib/protowire.ts's encoder (protobuf-es messages cost a reflective create() per change). */
  transactions: WireTxn[];
  /** Set when the batch holds a non-final chunk of a large transaction. */
  chunking: Chunking | null;
  /** Committed transactions were left for the next batch (did not fit). */
  more: boolean;
}

interface UnitRow { txid: string; tbl: string; op: string; keys: string; rows: string; prevs: string | null; cols: string | null }

/** A capture unit's row changes, in capture order (see lib/jsonsplit.ts). */
function changesOf(u: UnitRow): WireChange[] {
  const keys = unitKeys(u);
  const rows = unitRows(u, keys.length);
  const prevs = u.prevs === null ? null : splitJsonArray(u.prevs);
  if (keys.length !== rows.length) throw new Error(`capture unit of ${u.tbl} has ${keys.length} keys but ${rows.length} rows`);
  const op = OPS[u.op];
  const out: WireChange[] = new Array(keys.length);
  for (let i = 0; i < keys.length; i++) {
    const prev = prevs && prevs[i] !== "null" ? prevs[i] : "";
    out[i] = { table: u.tbl, op, key: keys[i], row: rows[i], prev };
  }
  return out;
}

const UNITS = `SELECT c.txid::text AS txid, c.tbl, c.op, c.keys, c.rows, c.prevs, c.cols FROM _branchsync.changes c`;
const TXN_COLS = `txid::text AS txid, n, (extract(epoch FROM started_at) * 1000000)::bigint AS t, base::text AS base, seen_hlc::text AS seen`;

interface TxnRow { txid: string; n: number; t: string; base: string; seen: string }

function header(r: TxnRow, clock: Clock): Pick<WireTxn, "originTxn" | "commitTimeUs" | "baseSeq" | "hlc"> {
  return { originTxn: BigInt(r.txid), commitTimeUs: BigInt(r.t), baseSeq: BigInt(r.base), hlc: clock.stamp(Number(r.t) / 1000, BigInt(r.seen)) };
}

/**
 * Next batch after excluding `inFlight` txids: at most `max` changes and
 * about `maxChars` characters (BATCH_CHARS). `chunking` continues a large
 * transaction already partly sent.
 */
export async function readBatch(db: pg.Pool, inFlight: string[], max: number, chunking: Chunking | null, clock: Clock, maxChars = BATCH_CHARS): Promise<ReadResult> {
  if (chunking) return readChunk(db, chunking, max, clock, maxChars);
  // One round trip (_branchsync.read_batch, agent/capture/install.ts).
  const { rows } = await db.query<TxnRow & Partial<UnitRow> & { fits: boolean; pending: number }>({
    name: "bs-read-batch",
    text: "SELECT * FROM _branchsync.read_batch($1::xid8[], $2)",
    values: [inFlight, max],
  });
  if (rows.length === 0) return { transactions: [], chunking: null, more: false };
  const start = { txid: rows[0].txid, nextChunk: 0, afterUnit: "0", skipRows: 0 };
  if (!rows[0].fits) return readChunk(db, start, max, clock, maxChars);
  const byTxid = new Map<string, WireTxn>();
  for (const r of rows) {
    let t = byTxid.get(r.txid);
    if (!t) {
      t = { ...header(r, clock), chunkIndex: 0, lastChunk: true, changes: [] };
      byTxid.set(r.txid, t);
    }
    if (r.tbl) t.changes.push(...changesOf(r as UnitRow));
  }
  // Whole transactions while their text fits; one that alone does not goes in chunks.
  const transactions: WireTxn[] = [];
  let chars = 0;
  for (const t of byTxid.values()) {
    const c = t.changes.reduce((sum, ch) => sum + charsOf(ch), 0);
    if (transactions.length > 0 && chars + c > maxChars) break;
    if (c > maxChars) return readChunk(db, { ...start, txid: t.originTxn.toString() }, max, clock, maxChars);
    transactions.push(t);
    chars += c;
  }
  // The window takes at most 256 transactions, so a full window may hide more.
  const more = transactions.length < rows[0].pending || rows[0].pending === 256;
  return { transactions, chunking: null, more };
}

/** Most capture units one chunk reads. */
const CHUNK_UNITS = 256;

/**
 * A chunk: the transaction's next changes in capture order, at most `max`
 * and about `maxChars` characters (at least one change), from at most
 * CHUNK_UNITS units; it may end inside a unit.
 */
async function readChunk(db: pg.Pool, c: Chunking, max: number, clock: Clock, maxChars: number): Promise<ReadResult> {
  const txn = await db.query<TxnRow>(`SELECT ${TXN_COLS} FROM _branchsync.txns WHERE txid = $1::xid8`, [c.txid]);
  if (txn.rows.length === 0) return { transactions: [], chunking: null, more: false };
  // One unit more than a chunk may take, to know whether this chunk is the
  // last: a transaction whose remaining units were exactly a full read
  // otherwise got a chunk not marked last, and then none. Sizes in bytes
  // (octet_length reads a stored value's size from its header; length()
  // would decompress every unit to count characters, and the chosen ones
  // are read again below).
  const units = await db.query<{ uid: string; n: number; chars: number }>({
    name: "bs-read-units",
    text: `SELECT u.id::text AS uid, u.n, octet_length(u.keys) + octet_length(u.rows) + coalesce(octet_length(u.prevs), 0) AS chars
             FROM _branchsync.changes u WHERE u.txid = $1::xid8 AND u.id > $2::bigint ORDER BY u.id LIMIT ${CHUNK_UNITS + 1}`,
    values: [c.txid, c.afterUnit],
  });
  if (units.rows.length === 0) return { transactions: [], chunking: null, more: false };
  // The units this chunk may draw on, while it has room (the last one maybe
  // in part); what they hold is counted exactly below.
  const ids: string[] = [];
  let n = -c.skipRows;
  let chars = 0;
  for (const u of units.rows.slice(0, CHUNK_UNITS)) {
    if (ids.length > 0 && (n >= max || chars >= maxChars)) break;
    ids.push(u.uid);
    n += u.n;
    chars += u.chars;
  }
  const { rows } = await db.query<UnitRow & { uid: string }>({
    name: "bs-read-unit-changes",
    // The txid too: the units' index leads with it (a scan of every unit otherwise).
    text: `SELECT c.id::text AS uid, ${UNITS.slice("SELECT ".length)} WHERE c.txid = $1::xid8 AND c.id = ANY($2::bigint[]) ORDER BY c.id`,
    values: [c.txid, ids],
  });
  // Gone since the units were sized: the hub reported the transaction
  // sequenced (a resend came back DUPLICATE) and its units were deleted, all
  // at once. An empty chunk would be refused and set aside as an error.
  if (rows.length === 0) return { transactions: [], chunking: null, more: false };
  const changes: WireChange[] = [];
  let taken = 0;
  let next: Chunking | null = null;
  let before = c.afterUnit;
  for (let i = 0; i < rows.length && !next; i++) {
    const all = changesOf(rows[i]);
    let r = i === 0 ? c.skipRows : 0;
    for (; r < all.length; r++) {
      const size = charsOf(all[r]);
      if (changes.length > 0 && (changes.length >= max || taken + size > maxChars)) break;
      changes.push(all[r]);
      taken += size;
    }
    if (r < all.length) next = { txid: c.txid, nextChunk: c.nextChunk + 1, afterUnit: before, skipRows: r };
    before = rows[i].uid;
  }
  if (!next && ids.length < units.rows.length) next = { txid: c.txid, nextChunk: c.nextChunk + 1, afterUnit: before, skipRows: 0 };
  const t: WireTxn = { ...header(txn.rows[0], clock), chunkIndex: c.nextChunk, lastChunk: next === null, changes };
  return { transactions: [t], chunking: next, more: true };
}

/**
 * Moves a transaction the hub rejected aside, whole, with the reason; its
 * rows as row images, whichever way the units hold them, for an operator.
 */
export async function setAside(db: pg.Pool, txid: string, error: string): Promise<void> {
  const c = await db.connect();
  try {
    await c.query("BEGIN");
    const { rows } = await c.query<UnitRow & { n: number }>(
      `DELETE FROM _branchsync.changes WHERE txid = $1::xid8 RETURNING tbl, op, n, keys, rows, cols`, [txid]);
    const keys = rows.map((u) => unitKeys(u));
    await c.query(
      `INSERT INTO _branchsync.rejected(txid, tbl, op, n, keys, rows, error)
       SELECT $1::xid8, u.tbl, u.op, u.n, u.keys::jsonb, u.rows::jsonb, $2 FROM unnest($3::text[], $4::"char"[], $5::int[], $6::text[], $7::text[]) AS u(tbl, op, n, keys, rows)`,
      [txid, error, rows.map((u) => u.tbl), rows.map((u) => u.op), rows.map((u) => u.n),
        keys.map((k) => `[${k.join(",")}]`), rows.map((u, i) => `[${unitRows(u, keys[i].length).join(",")}]`)]);
    await c.query("DELETE FROM _branchsync.txns WHERE txid = $1::xid8", [txid]);
    await c.query("COMMIT");
  } catch (e) {
    await c.query("ROLLBACK").catch(() => undefined);
    throw e;
  } finally {
    c.release();
  }
}
