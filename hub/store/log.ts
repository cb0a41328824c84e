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
 */
import type pg from "pg";

export interface IncomingTxn {
  originTxn: bigint;
  chunkIndex: number;
  lastChunk: boolean;
  nChanges: number;
  body: Uint8Array;
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
  body: Buffer;
}

export async function appendBatch(
  pool: pg.Pool, schema: string, branch: string, txns: IncomingTxn[],
): Promise<{ outcomes: AppendOutcome[]; head: bigint }> {
  const whole = txns.every((t) => t.chunkIndex === 0 && t.lastChunk)
    && new Set(txns.map((t) => t.originTxn)).size === txns.length;
  if (whole) {
    try {
      return await appendWhole(pool, schema, branch, txns);
    } catch (e) {
      // A unique index objected (two sessions of one branch racing with the
      // same transaction): the general path re-checks under the lock.
      if ((e as { code?: string }).code !== "23505") throw e;
    }
  }
  return appendGeneral(pool, schema, branch, txns);
}

/**
 * The common case in one statement (one round trip, and the head lock held
 * only for it): whole transactions, no chunks. The head row lock is taken
 * first (FOR UPDATE re-reads the newest head if another writer committed
 * meanwhile) and held until the statement's own commit.
 */
async function appendWhole(pool: pg.Pool, schema: string, branch: string, txns: IncomingTxn[]): Promise<{ outcomes: AppendOutcome[]; head: bigint }> {
  const { rows } = await pool.query({
    name: `append-whole-${schema}`,
    text: `WITH h AS (SELECT seq FROM ${schema}.head FOR UPDATE),
      inc AS (SELECT t, n, b, ord FROM unnest($2::bigint[], $3::int[], $4::bytea[]) WITH ORDINALITY AS u(t, n, b, ord)),
      dup AS (SELECT origin_txn, seq FROM ${schema}.log WHERE origin_branch = $1 AND origin_txn = ANY($2::bigint[]) AND part = 0),
      fresh AS (SELECT inc.*, (SELECT seq FROM h) + row_number() OVER (ORDER BY ord) AS seq
                  FROM inc WHERE t NOT IN (SELECT origin_txn FROM dup)),
      ins AS (INSERT INTO ${schema}.log(seq, part, origin_branch, origin_txn, last_part, n_changes, body)
              SELECT seq, 0, $1, t, true, n, b FROM fresh),
      upd AS (UPDATE ${schema}.head SET seq = (SELECT seq FROM h) + (SELECT count(*) FROM fresh)
               WHERE EXISTS (SELECT 1 FROM fresh) RETURNING seq)
      SELECT t::text AS txn, seq::text AS seq, false AS dup FROM fresh
      UNION ALL SELECT origin_txn::text, seq::text, true FROM dup
      UNION ALL SELECT NULL, coalesce((SELECT seq FROM upd), (SELECT seq FROM h))::text, NULL`,
    values: [branch, txns.map((t) => t.originTxn.toString()), txns.map((t) => t.nChanges), txns.map((t) => Buffer.from(t.body))],
  });
  const byTxn = new Map<string, AppendOutcome>();
  let head = 0n;
  for (const r of rows) {
    if (r.txn === null) { head = BigInt(r.seq); continue; }
    byTxn.set(r.txn, r.dup ? { kind: "duplicate", seq: BigInt(r.seq) } : { kind: "accepted", seq: BigInt(r.seq) });
  }
  return { outcomes: txns.map((t) => byTxn.get(t.originTxn.toString())!), head };
}

async function appendGeneral(
  pool: pg.Pool, schema: string, branch: string, txns: IncomingTxn[],
): Promise<{ outcomes: AppendOutcome[]; head: bigint }> {
  const c = await pool.connect();
  try {
    await c.query("BEGIN");
    const h = await c.query(`SELECT seq FROM ${schema}.head FOR UPDATE`);
    let head = BigInt(h.rows[0].seq);
    const ids = [...new Set(txns.map((t) => t.originTxn.toString()))];
    const dup = await c.query(
      `SELECT origin_txn, seq FROM ${schema}.log WHERE origin_branch = $1 AND origin_txn = ANY($2::bigint[]) AND part = 0`,
      [branch, ids]);
    const known = new Map<string, bigint>(dup.rows.map((r) => [String(r.origin_txn), BigInt(r.seq)]));
    const outcomes: AppendOutcome[] = [];
    const rows = { seq: [] as string[], part: [] as number[], txn: [] as string[], last: [] as boolean[], n: [] as number[], body: [] as Buffer[] };
    for (const t of txns) {
      const id = t.originTxn.toString();
      const prior = known.get(id);
      if (prior !== undefined) { outcomes.push({ kind: "duplicate", seq: prior }); continue; }
      if (!t.lastChunk) {
        if (t.chunkIndex === 0) {
          // A resend restarts from chunk 0, possibly with other chunk borders.
          await c.query(`DELETE FROM ${schema}.pending_chunks WHERE origin_branch = $1 AND origin_txn = $2`, [branch, id]);
        }
        await c.query(
          `INSERT INTO ${schema}.pending_chunks(origin_branch, origin_txn, part, n_changes, body) VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (origin_branch, origin_txn, part) DO UPDATE SET n_changes = excluded.n_changes, body = excluded.body`,
          [branch, id, t.chunkIndex, t.nChanges, Buffer.from(t.body)]);
        outcomes.push({ kind: "staged" });
        continue;
      }
      if (t.chunkIndex > 0) {
        const p = await c.query(
          `SELECT count(*)::int AS n, coalesce(max(part), -1) AS maxp FROM ${schema}.pending_chunks WHERE origin_branch = $1 AND origin_txn = $2 AND part < $3`,
          [branch, id, t.chunkIndex]);
        if (p.rows[0].n !== t.chunkIndex) {
          outcomes.push({ kind: "rejected", error: `transaction ${id}: chunks 0..${t.chunkIndex - 1} not all received; resend it from chunk 0` });
          continue;
        }
      }
      head += 1n;
      if (t.chunkIndex > 0) {
        await c.query(
          `INSERT INTO ${schema}.log(seq, part, origin_branch, origin_txn, last_part, n_changes, body)
           SELECT $1, part, origin_branch, origin_txn, false, n_changes, body FROM ${schema}.pending_chunks
            WHERE origin_branch = $2 AND origin_txn = $3 AND part < $4`,
          [head.toString(), branch, id, t.chunkIndex]);
        await c.query(`DELETE FROM ${schema}.pending_chunks WHERE origin_branch = $1 AND origin_txn = $2`, [branch, id]);
      }
      known.set(id, head);
      rows.seq.push(head.toString()); rows.part.push(t.chunkIndex); rows.txn.push(id);
      rows.last.push(true); rows.n.push(t.nChanges); rows.body.push(Buffer.from(t.body));
      outcomes.push({ kind: "accepted", seq: head });
    }
    if (rows.seq.length > 0) {
      await c.query(
        `INSERT INTO ${schema}.log(seq, part, origin_branch, origin_txn, last_part, n_changes, body)
         SELECT s, p, $1, t, l, n, b FROM unnest($2::bigint[], $3::int[], $4::bigint[], $5::bool[], $6::int[], $7::bytea[]) AS u(s, p, t, l, n, b)`,
        [branch, rows.seq, rows.part, rows.txn, rows.last, rows.n, rows.body]);
      await c.query(`UPDATE ${schema}.head SET seq = $1`, [head.toString()]);
    }
    await c.query("COMMIT");
    return { outcomes, head };
  } catch (e) {
    await c.query("ROLLBACK").catch(() => undefined);
    throw e;
  } finally {
    c.release();
  }
}

/** Log entries after (seq, part), in order; at most `limit` rows. */
export async function readAfter(pool: pg.Pool, schema: string, seq: bigint, part: number, limit: number): Promise<LogEntry[]> {
  const { rows } = await pool.query({
    name: `read-after-${schema}`,
    text: `SELECT seq, part, last_part, origin_branch, origin_txn, n_changes, body FROM ${schema}.log
            WHERE (seq, part) > ($1::bigint, $2::int) ORDER BY seq, part LIMIT $3`,
    values: [seq.toString(), part, limit],
  });
  return rows.map((r) => ({ seq: BigInt(r.seq), part: r.part, lastPart: r.last_part, originBranch: r.origin_branch, originTxn: BigInt(r.origin_txn), nChanges: r.n_changes, body: r.body }));
}

export async function readHead(pool: pg.Pool, schema: string): Promise<bigint> {
  const { rows } = await pool.query(`SELECT seq FROM ${schema}.head`);
  return BigInt(rows[0].seq);
}

export async function saveCursor(pool: pg.Pool, schema: string, branch: string, seq: bigint): Promise<void> {
  await pool.query(
    `INSERT INTO ${schema}.cursors(branch_id, acked_seq) VALUES ($1, $2)
     ON CONFLICT (branch_id) DO UPDATE SET acked_seq = greatest(${schema}.cursors.acked_seq, excluded.acked_seq), updated_at = now()`,
    [branch, seq.toString()]);
}
