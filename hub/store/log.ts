/**
 * The per-tenant change log: durable store-and-forward for every branch.
 *
 * Invariants this module keeps:
 *  - Gap-free, in-order visibility: a transaction gets its sequence number
 *    while holding the tenant's head row lock, and keeps the lock until it
 *    commits. So seq n+1 is assigned only after seq n committed, and a
 *    reader that sees n+1 also sees n. (A PostgreSQL sequence gives neither.)
 *  - Exactly once: (origin_branch, origin_txn, part) is unique; a resent
 *    transaction is reported DUPLICATE with its original seq and not stored.
 *  - Durable before acked: appendBatch resolves only after COMMIT.
 *  - Whole transactions: a chunked transaction waits in pending_chunks and
 *    enters the log (all parts under one seq) only with its last chunk.
 *  - Resolved: what the log holds for a change is the row as the conflict
 *    rules decided it (the origin's write unless it lost or was merged), and
 *    row_state moves with it in the same transaction, in sequence order.
 */
import type pg from "pg";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { ChangeSchema, TransactionSchema, Op } from "../../gen/branchsync/v1/sync_pb.ts";
import { decodeTxn, type WireChange } from "../../lib/protowire.ts";
import { resolve, concurrent, type Policy, type RowOp, type RowVersion } from "../conflict/resolve.ts";
import { policyOf } from "./policies.ts";
import { loadVersions, versionsUpsert, rowId } from "./rowState.ts";
import { changesAt, imageId } from "./images.ts";
import { insertConflicts, type ConflictRecord } from "./conflicts.ts";
import { intArray, textArray } from "../../lib/pgarray.ts";

export interface IncomingTxn {
  originTxn: bigint;
  chunkIndex: number;
  lastChunk: boolean;
  nChanges: number;
  body: Uint8Array;
  changes: WireChange[];
  baseSeq: bigint;
  /** The origin's HLC (the hub's clock stands in when a client sends none). */
  hlc: bigint;
}

export type AppendOutcome =
  | { kind: "accepted"; seq: bigint }
  | { kind: "duplicate"; seq: bigint }
  | { kind: "staged" }
  | { kind: "rejected"; error: string };

export interface LogEntry {
  seq: bigint;
  part: number;
  lastPart: boolean;
  originBranch: string;
  originTxn: bigint;
  nChanges: number;
  /** Conflicts decided in this entry: its origin gets the resolved entry back, losers get notices. */
  conflicts: number;
  body: Buffer;
}

export interface AppendResult {
  outcomes: AppendOutcome[];
  head: bigint;
  /** Appended by append_plain: each accepted transaction is one entry holding exactly the body it came with. */
  plain?: boolean;
  /** Conflicts recorded, for metrics. */
  conflicts: ConflictCount[];
}

/**
 * A whole transaction about to enter the log. Only its last part is held
 * here: the parts before it wait in pending_chunks and are read a few at a
 * time while it is written (see appendGeneral).
 */
interface Sequenced {
  id: string;
  seq: bigint;
  baseSeq: bigint;
  hlc: bigint;
  /** Parts 0..staged-1 are in pending_chunks. */
  staged: number;
  last: Part;
}

/** One part of a sequenced transaction, on its way into the log. */
interface Part {
  txn: Sequenced;
  part: number;
  last: boolean;
  n: number;
  body: Uint8Array;
  changes: WireChange[];
  rewrites: Map<number, WireChange>;
  conflicts: number;
}

/**
 * How much of a batch the general path resolves and writes at once. A
 * transaction of thousands of chunks (an initial upload) passes through in
 * steps of this size, so the hub's memory holds one step, not the whole
 * transaction (invariant 4: bounded memory). Each step sees the row
 * versions and log entries the earlier ones wrote, in the same database
 * transaction, just as a later batch would.
 */
const STEP_CHANGES = 5000;
const STEP_BYTES = 4 << 20;
/** Staged parts read per query: each is at most one message (4 MiB), and arrives as hex text. */
const PARTS_PER_READ = 2;

/** Conflicts decided, counted per table and strategy (for metrics). */
export interface ConflictCount { table: string; strategy: string; n: number }

/**
 * Appends a session's batch: dedup, chunk staging, sequencing, conflict
 * resolution and the log write, in one database transaction under the
 * tenant's head row lock (which is what orders everything; see top).
 */
export async function appendBatch(
  pool: pg.Pool, schema: string, branch: string, txns: IncomingTxn[], policies: Map<string, Policy>,
): Promise<AppendResult> {
  if (fastPathApplies(txns, policies)) {
    try {
      const r = await appendPlain(pool, schema, branch, txns);
      if (r) return r;
    } catch (e) {
      // A unique index objected (two sessions of one branch racing with the
      // same transaction): the general path re-checks under the lock.
      if ((e as { code?: string }).code !== "23505") throw e;
    }
  }
  return appendGeneral(pool, schema, branch, txns, policies);
}

function fastPathApplies(txns: IncomingTxn[], policies: Map<string, Policy>): boolean {
  const ids = new Set<bigint>();
  for (const t of txns) {
    if (t.chunkIndex !== 0 || !t.lastChunk || ids.has(t.originTxn)) return false;
    ids.add(t.originTxn);
    // Column-merge tables track per-column versions: the general path.
    for (const ch of t.changes) if (policyOf(policies, ch.table).strategy === "column-merge") return false;
  }
  return true;
}

/**
 * The common case in one round trip (the tenant's append_plain function,
 * which holds the head lock only for it): whole transactions, none a
 * resend, and no change concurrent with its row's version. It writes only
 * if all of that holds and returns null otherwise, for the general path to
 * sort out. The check is against the versions before the batch, which can
 * only err towards the general path (a later transaction of the batch
 * meets its own branch's version, never a conflict).
 */
async function appendPlain(pool: pg.Pool, schema: string, branch: string, txns: IncomingTxn[]): Promise<AppendResult | null> {
  const ch = { t: [] as string[], k: [] as string[], op: [] as string[], txo: [] as number[] };
  txns.forEach((t, i) => {
    for (const c of t.changes) { ch.t.push(c.table); ch.k.push(c.key); ch.op.push(ROW_OPS[c.op]); ch.txo.push(i + 1); }
  });
  const { rows } = await pool.query({
    name: `append-plain-${schema}`,
    text: `SELECT ${schema}.append_plain($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)::text AS head`,
    values: [branch, txns.map((t) => t.originTxn.toString()), txns.map((t) => t.nChanges), Buffer.concat(txns.map((t) => t.body)),
      txns.map((t) => t.body.length), txns.map((t) => t.baseSeq.toString()), txns.map((t) => t.hlc.toString()),
      textArray(ch.t), textArray(ch.k), textArray(ch.op), intArray(ch.txo)],
  });
  if (rows[0].head === null) return null;
  const before = BigInt(rows[0].head);
  return { outcomes: txns.map((_, i) => ({ kind: "accepted", seq: before + BigInt(i + 1) })), head: before + BigInt(txns.length), conflicts: [], plain: true };
}

/**
 * Everything else: resends, chunks, conflicts; several statements in one
 * transaction. Sequencing is decided first; then the parts go through
 * resolution and into the log in steps (writeSteps).
 */
async function appendGeneral(
  pool: pg.Pool, schema: string, branch: string, txns: IncomingTxn[], policies: Map<string, Policy>,
): Promise<AppendResult> {
  const c = await pool.connect();
  try {
    // One round trip: a simple-protocol query may hold several statements.
    const locked = await c.query(`BEGIN; SELECT seq FROM ${schema}.head FOR UPDATE`) as unknown as pg.QueryResult[];
    let head = BigInt(locked[1].rows[0].seq);
    const ids = [...new Set(txns.map((t) => t.originTxn.toString()))];
    const dup = await c.query({
      name: `dup-${schema}`,
      text: `SELECT origin_txn::text AS t, seq::text AS seq FROM ${schema}.log WHERE origin_branch = $1 AND origin_txn = ANY($2::bigint[]) AND part = 0`,
      values: [branch, ids],
    });
    const known = new Map<string, bigint>(dup.rows.map((r) => [r.t, BigInt(r.seq)]));
    const outcomes: AppendOutcome[] = [];
    const complete: Sequenced[] = [];
    const staged: string[] = [];
    for (const t of txns) {
      const id = t.originTxn.toString();
      const prior = known.get(id);
      if (prior !== undefined) { outcomes.push({ kind: "duplicate", seq: prior }); continue; }
      if (!t.lastChunk) {
        await stageChunk(c, schema, branch, t);
        outcomes.push({ kind: "staged" });
        continue;
      }
      if (t.chunkIndex > 0 && !(await allStaged(c, schema, branch, t))) {
        outcomes.push({ kind: "rejected", error: `transaction ${id}: chunks 0..${t.chunkIndex - 1} not all received; resend it from chunk 0` });
        continue;
      }
      if (t.chunkIndex > 0) staged.push(id);
      head += 1n;
      known.set(id, head);
      const seqd = { id, seq: head, baseSeq: t.baseSeq, hlc: t.hlc, staged: t.chunkIndex } as Sequenced;
      seqd.last = { txn: seqd, part: t.chunkIndex, last: true, n: t.nChanges, body: t.body, changes: t.changes, rewrites: new Map(), conflicts: 0 };
      complete.push(seqd);
      outcomes.push({ kind: "accepted", seq: head });
    }
    const conflicts = await writeSteps(c, schema, branch, complete, policies, { head, staged });
    await c.query("COMMIT");
    return { outcomes, head, conflicts };
  } catch (e) {
    await c.query("ROLLBACK").catch(() => undefined);
    throw e;
  } finally {
    c.release();
  }
}

async function stageChunk(c: pg.PoolClient, schema: string, branch: string, t: IncomingTxn) {
  const id = t.originTxn.toString();
  if (t.chunkIndex === 0) {
    // A resend restarts from chunk 0, possibly with other chunk borders.
    await c.query(`DELETE FROM ${schema}.pending_chunks WHERE origin_branch = $1 AND origin_txn = $2`, [branch, id]);
  }
  await c.query(
    `INSERT INTO ${schema}.pending_chunks(origin_branch, origin_txn, part, n_changes, body) VALUES ($1, $2, $3, $4, $5)
     ON CONFLICT (origin_branch, origin_txn, part) DO UPDATE SET n_changes = excluded.n_changes, body = excluded.body`,
    [branch, id, t.chunkIndex, t.nChanges, Buffer.from(t.body)]);
}

/** Whether chunks 0..chunkIndex-1 of a transaction whose last chunk arrived are all staged. */
async function allStaged(c: pg.PoolClient, schema: string, branch: string, t: IncomingTxn): Promise<boolean> {
  const { rows } = await c.query(
    `SELECT count(*)::int AS n FROM ${schema}.pending_chunks WHERE origin_branch = $1 AND origin_txn = $2 AND part < $3`,
    [branch, t.originTxn.toString(), t.chunkIndex]);
  return rows[0].n === t.chunkIndex;
}

/** Staged parts from..to-1 of a transaction, decoded. */
async function readStaged(c: pg.PoolClient, schema: string, branch: string, t: Sequenced, from: number, to: number): Promise<Part[]> {
  const { rows } = await c.query(
    `SELECT part, n_changes, body FROM ${schema}.pending_chunks WHERE origin_branch = $1 AND origin_txn = $2 AND part >= $3 AND part < $4 ORDER BY part`,
    [branch, t.id, from, to]);
  // allStaged counted them under the head lock, which every staging takes too.
  if (rows.length !== to - from) throw new Error(`transaction ${t.id}: staged chunks ${from}..${to - 1} changed while it was being logged`);
  return rows.map((r) => ({ txn: t, part: r.part, last: false, n: r.n_changes, body: r.body, changes: decodeTxn(r.body, 0, r.body.length).changes, rewrites: new Map(), conflicts: 0 }));
}

/**
 * Every part of the sequenced transactions, in (seq, part) order, in steps
 * of about STEP_CHANGES changes or STEP_BYTES; the last step also moves the
 * head and drops the staged chunks.
 */
async function writeSteps(
  c: pg.PoolClient, schema: string, branch: string, txns: Sequenced[], policies: Map<string, Policy>, end: { head: bigint; staged: string[] },
): Promise<ConflictCount[]> {
  const counts = new Map<string, ConflictCount>();
  let step: Part[] = [];
  let changes = 0;
  let bytes = 0;
  const flush = async (final: boolean) => {
    const { versions, conflicts } = await resolveAll(c, schema, branch, step, policies);
    await writeLog(c, schema, branch, step, versions, final ? end : null);
    await insertConflicts(c, schema, conflicts);
    for (const r of conflicts) {
      const k = `${r.table}\u0000${r.strategy}`;
      const n = counts.get(k);
      if (n) n.n++; else counts.set(k, { table: r.table, strategy: r.strategy, n: 1 });
    }
    step = []; changes = 0; bytes = 0;
  };
  // A full step is written before the next part joins, so the last step,
  // which moves the head, is never empty.
  const add = async (p: Part) => {
    if (changes >= STEP_CHANGES || bytes >= STEP_BYTES) await flush(false);
    step.push(p); changes += p.changes.length; bytes += p.body.length;
  };
  for (const t of txns) {
    for (let from = 0; from < t.staged; from += PARTS_PER_READ) {
      for (const p of await readStaged(c, schema, branch, t, from, Math.min(t.staged, from + PARTS_PER_READ))) await add(p);
    }
    await add(t.last);
  }
  await flush(true);
  return [...counts.values()];
}

const ROW_OPS: Record<number, RowOp> = { [Op.INSERT]: "I", [Op.UPDATE]: "U", [Op.DELETE]: "D" };

/**
 * Runs every change of a step past the row versions (conflict/resolve.ts),
 * in sequence order, so a later transaction of the step sees the versions
 * an earlier one left (and a later step sees them in row_state). Records
 * rewrites where the resolved row differs from what the origin wrote.
 */
async function resolveAll(c: pg.PoolClient, schema: string, branch: string, parts: Part[], policies: Map<string, Policy>) {
  const keys = new Map<string, { table: string; key: string }>();
  for (const p of parts) for (const ch of p.changes) keys.set(rowId(ch.table, ch.key), { table: ch.table, key: ch.key });
  const stored = await loadVersions(c, schema, [...keys.values()]);
  // Images of stored versions that some change of the step is concurrent with:
  // by seq, or (a loser's change based before the decision that kept the row)
  // by the version's lost map, whose image is still the one at st.seq.
  // Without it such a change would be decided whole-row against no image.
  const needed: { seq: bigint; table: string; key: string }[] = [];
  for (const p of parts) {
    for (const ch of p.changes) {
      const st = stored.get(rowId(ch.table, ch.key));
      if (st && st.op !== "D" && concurrent(st, { base: p.txn.baseSeq, branch })) needed.push({ seq: st.seq, table: ch.table, key: ch.key });
    }
  }
  const storedImages = await changesAt(c, schema, needed);
  const current = new Map<string, { st: RowVersion; image: string | null }>();
  const versionOf = (id: string, table: string, key: string) => {
    const mine = current.get(id);
    if (mine) return mine;
    const st = stored.get(id);
    if (!st) return undefined;
    const img = st.op === "D" ? null : storedImages.get(imageId(st.seq, table, key))?.row ?? null;
    return { st, image: img };
  };
  const conflicts: ConflictRecord[] = [];
  for (const p of parts) {
    const t = p.txn;
    p.changes.forEach((ch, i) => {
      const id = rowId(ch.table, ch.key);
      const before = versionOf(id, ch.table, ch.key);
      const policy = policyOf(policies, ch.table);
      const op = ROW_OPS[ch.op];
      const v = resolve(policy, before?.st, before?.image ?? null, { op, row: ch.row, prev: ch.prev, branch, hlc: t.hlc, base: t.baseSeq, seq: t.seq });
      current.set(id, { st: v.state, image: v.result });
      if (!v.conflict) return;
      p.conflicts++;
      const wrote = op === "D" ? null : ch.row;
      if (v.result !== wrote) {
        p.rewrites.set(i, v.result === null
          ? { table: ch.table, op: Op.DELETE, key: ch.key, row: before?.image ?? ch.row, prev: "" }
          : { table: ch.table, op: Op.UPDATE, key: ch.key, row: v.result, prev: "" });
      }
      conflicts.push({
        seq: t.seq, table: ch.table, key: ch.key, kind: v.conflict.kind, strategy: policy.strategy,
        existingBranch: before!.st.branch, incomingBranch: branch, existingRow: before!.image, incomingRow: wrote,
        resultRow: v.result, winnerBranch: v.conflict.winner, loserBranch: v.conflict.loser, reason: v.conflict.reason, status: v.conflict.status,
      });
    });
  }
  const versions = new Map<string, RowVersion>();
  for (const [id, v] of current) versions.set(id, v.st);
  return { versions, conflicts };
}

/** Encodes a part again with its resolved changes. */
function rewritten(p: Part): Buffer {
  if (p.rewrites.size === 0) return Buffer.from(p.body);
  const t = fromBinary(TransactionSchema, p.body);
  for (const [i, ch] of p.rewrites) t.changes[i] = create(ChangeSchema, ch);
  return Buffer.from(toBinary(TransactionSchema, t));
}

/** A step's parts into the log and their rows' versions into row_state; with `end`, also the head and the staged chunks. */
async function writeLog(
  c: pg.PoolClient, schema: string, branch: string, parts: Part[], versions: Map<string, RowVersion>, end: { head: bigint; staged: string[] } | null,
) {
  if (parts.length === 0) return;
  const rows = { seq: [] as string[], part: [] as number[], txn: [] as string[], last: [] as boolean[], n: [] as number[], conf: [] as number[], len: [] as number[] };
  const bodies: Buffer[] = [];
  for (const p of parts) {
    const body = rewritten(p);
    rows.seq.push(p.txn.seq.toString()); rows.part.push(p.part); rows.txn.push(p.txn.id); rows.last.push(p.last);
    rows.n.push(p.n); rows.conf.push(p.conflicts); rows.len.push(body.length); bodies.push(body);
  }
  const up = versionsUpsert(schema, versions, end ? 12 : 10);
  // The bodies travel as one binary parameter, cut apart by their lengths:
  // a bytea[] parameter would be hex text, twice their size, on the JS heap.
  const ins = `INSERT INTO ${schema}.log(seq, part, origin_branch, origin_txn, last_part, n_changes, conflicts, body)
                 SELECT s, p, $1, t, l, n, k, substring($9::bytea FROM (sum(len) OVER (ORDER BY ord) - len + 1)::int FOR len)
                   FROM unnest($2::bigint[], $3::int[], $4::bigint[], $5::bool[], $6::int[], $7::int[], $8::int[]) WITH ORDINALITY AS u(s, p, t, l, n, k, len, ord)`;
  const values = [branch, rows.seq, rows.part, rows.txn, rows.last, rows.n, rows.conf, rows.len, Buffer.concat(bodies)];
  await c.query(end
    ? {
      name: `append-${schema}`,
      text: `WITH ins AS (${ins}),
                  hd AS (UPDATE ${schema}.head SET seq = $10, run_branch = ''),
                  pc AS (DELETE FROM ${schema}.pending_chunks WHERE origin_branch = $1 AND origin_txn = ANY($11::bigint[])),
                  rs AS (${up.sql})
             SELECT 1`,
      values: [...values, end.head.toString(), end.staged, ...up.values],
    }
    : { name: `append-step-${schema}`, text: `WITH ins AS (${ins}), rs AS (${up.sql}) SELECT 1`, values: [...values, ...up.values] });
}

/** Log entries after (seq, part), in order; at most `limit` rows. */
export async function readAfter(pool: pg.Pool, schema: string, seq: bigint, part: number, limit: number): Promise<LogEntry[]> {
  const { rows } = await pool.query({
    name: `read-after-${schema}`,
    text: `SELECT seq, part, last_part, origin_branch, origin_txn, n_changes, conflicts, body FROM ${schema}.log
            WHERE (seq, part) > ($1::bigint, $2::int) ORDER BY seq, part LIMIT $3`,
    values: [seq.toString(), part, limit],
  });
  return rows.map((r) => ({ seq: BigInt(r.seq), part: r.part, lastPart: r.last_part, originBranch: r.origin_branch, originTxn: BigInt(r.origin_txn), nChanges: r.n_changes, conflicts: r.conflicts, body: r.body }));
}

export async function readHead(pool: pg.Pool, schema: string): Promise<bigint> {
  const { rows } = await pool.query(`SELECT seq FROM ${schema}.head`);
  return BigInt(rows[0].seq);
}

/**
 * Records how far a branch has acked, for operators (lag) only: a branch
 * resumes from its own durable cursor. So the write does not wait for its
 * WAL flush (set_config(…, true) lasts until this statement's commit); a
 * crash of the hub's database may show an older figure.
 */
export async function saveCursor(pool: pg.Pool, schema: string, branch: string, seq: bigint): Promise<void> {
  await pool.query(
    `INSERT INTO ${schema}.cursors(branch_id, acked_seq) SELECT $1, $2 FROM (SELECT set_config('synchronous_commit', 'off', true)) AS async
     ON CONFLICT (branch_id) DO UPDATE SET acked_seq = greatest(${schema}.cursors.acked_seq, excluded.acked_seq), updated_at = now()`,
    [branch, seq.toString()]);
}
