/**
 * Applies the hub's transactions to the branch database.
 *
 * Invariants:
 *  - Atomic: every source transaction is applied inside one local database
 *    transaction; a chunked one keeps that transaction open across
 *    messages, holding only the current chunk in memory.
 *  - Durable cursor: the cursor advances in the same local transaction as
 *    the rows, so a crash either keeps both or neither; redelivery after a
 *    crash starts after the cursor, never applying anything twice.
 *  - No echo: changes are written with branchsync.applying = on, which the
 *    capture triggers skip.
 *  - Hub order wins: an incoming change is skipped for a row that has a
 *    local change the hub has not sequenced yet, or sequenced after the
 *    incoming one. That local change will reach every other branch after
 *    the incoming one, so every branch ends with the same row.
 *  - Never blocked by one bad row: a transaction that cannot be applied here
 *    (a local constraint, a missing referenced row) is quarantined whole, in
 *    the same local transaction that applies the rest and moves the cursor,
 *    and NACKed; an operator retries or discards it later.
 *  - Exact values: rows go to PostgreSQL as the to_json text they were
 *    captured as, and json_populate_recordset parses each value with its
 *    column type's own input function; nothing passes through a JS number.
 */
import type pg from "pg";
import { toBinary } from "@bufbuild/protobuf";
import { TransactionSchema, type ChangeBatch, type Change, type Transaction } from "../../gen/branchsync/v1/sync_pb.ts";
import { quoteIdent } from "../../lib/ident.ts";
import { APPLY_LOCK } from "../capture/install.ts";
import { runsOf } from "./runs.ts";
import { makeOneTrip, TRIP_ROWS } from "./oneTrip.ts";
import { makeLocalIndex, rowIdOf, type LocalIndex, type LocalVersions } from "./localIndex.ts";
import type { LocalTable } from "../capture/introspect.ts";
import { cleanSql } from "./clean.ts";
import { APPLY_SYNCHRONOUS_COMMIT, SYNCHRONOUS_COMMIT } from "../config.ts";

export { ONE_TRIP_PAUSE_MS } from "./oneTrip.ts";

interface TableSql { upsert: string; insert: string; del: string }

/** `rows`: where the statements find the JSON array of row images. */
function tableSql(t: LocalTable, rows = "$1"): TableSql {
  const q = `${quoteIdent(t.schema)}.${quoteIdent(t.table)}`;
  const pk = t.primaryKey.map(quoteIdent).join(", ");
  const rest = t.columns.filter((c) => !t.primaryKey.includes(c.name)).map((c) => quoteIdent(c.name));
  const onConflict = rest.length === 0 ? "DO NOTHING" : `DO UPDATE SET ${rest.map((c) => `${c} = EXCLUDED.${c}`).join(", ")}`;
  const cols = t.columns.map((c) => quoteIdent(c.name)).join(", ");
  const json = t.columns.filter((c) => c.type === "json" || c.type === "jsonb");
  // json/jsonb arrive as strings of their text (see capture); cast them back.
  const source = json.length === 0
    ? `SELECT ${cols} FROM json_populate_recordset(NULL::${q}, ${rows}::json)`
    : `SELECT ${t.columns.map((c) => (json.includes(c) ? `(bs_e_.v ->> '${c.name}')::${c.type}` : `bs_r_.${quoteIdent(c.name)}`)).join(", ")}
         FROM jsonb_array_elements(${rows}::jsonb) AS bs_e_(v),
              LATERAL jsonb_populate_record(NULL::${q}, bs_e_.v - ARRAY[${json.map((c) => `'${c.name}'`).join(", ")}]) AS bs_r_`;
  return {
    upsert: `INSERT INTO ${q} (${cols}) ${source} ON CONFLICT (${pk}) ${onConflict}`,
    insert: `INSERT INTO ${q} (${cols}) ${source}`,
    del: `DELETE FROM ${q} WHERE (${pk}) IN (SELECT ${pk} FROM json_populate_recordset(NULL::${q}, ${rows}::json))`,
  };
}

export class ApplyError extends Error {}

/** Reads the local versions through `index` on `c`, which holds the exclusive apply lock. */
async function localVersions(c: pg.PoolClient, index: LocalIndex, changes: Change[]): Promise<LocalVersions | null> {
  for (;;) {
    const res = asList(await c.query(index.statements(changes.map((ch) => rowIdOf(ch.table, ch.key))).join(";\n")));
    const v = index.refresh(res[0].rows, res[1].rows, res[2].rows);
    if (v !== "again") return v;
  }
}

const asList = (res: unknown) => (Array.isArray(res) ? res : [res]) as pg.QueryResult[];

/** Numbers we put into SQL text ourselves; BigInt() refuses anything else. */
const num = (v: bigint | string) => BigInt(v).toString();

function supersededLocally(local: LocalVersions, ch: Change, seq: bigint): boolean {
  const v = local.get(rowIdOf(ch.table, ch.key));
  return v !== undefined && (v === null || v > seq);
}

/** A downstream transaction this branch could not apply, kept in _branchsync.quarantine. */
export interface Quarantined { seq: bigint; originBranch: string; originTxn: bigint; error: string; sqlstate: string }

export interface ApplyResult {
  /** The new cursor once committed, or null while a chunked transaction is still open. */
  cursor: bigint | null;
  /** Transactions quarantined by this apply (committed with the cursor); NACK them. */
  quarantined: Quarantined[];
}

export type RetryOutcome = { outcome: "applied" | "discarded" } | { outcome: "failed"; error: string };

export interface Applier {
  apply(batch: ChangeBatch): Promise<ApplyResult>;
  /**
   * Where the database's cursor is as a session begins (it read it there).
   * Each apply then moves the cursor only from where the previous one left
   * it, and fails (SQLSTATE CURSOR_MOVED_SQLSTATE) if a restart of the
   * database took applies back meanwhile; see _branchsync.move_cursor.
   */
  resume(cursor: bigint): void;
  /** The cursor as the last committed apply (or resume) left it; null when not known. */
  position(): bigint | null;
  /** Rolls back a half-received chunked transaction (stream ended). */
  abort(): Promise<void>;
  /** True while a chunked transaction holds a local transaction open. */
  busy(): boolean;
  /** Operator retry: applies `repair` (the rows' newest versions) once, marking the quarantined seq applied. */
  retry(seq: bigint, repair: Transaction): Promise<RetryOutcome>;
  discard(seq: bigint): Promise<RetryOutcome>;
}

/**
 * Errors that come from the data (a constraint, a type, a missing table or
 * column, a trigger's RAISE): applying again will fail again, so the
 * transaction is quarantined. Anything else (connection, serialization,
 * resources) is retried through a reconnect.
 */
export function isDataError(e: unknown): boolean {
  if (e instanceof ApplyError) return true;
  const code = (e as { code?: unknown }).code;
  return typeof code === "string" && /^(22|23|42|44|P0|2F|38|39)/.test(code);
}

const describe = (e: unknown) => ({ error: e instanceof Error ? e.message : String(e), sqlstate: String((e as { code?: unknown }).code ?? "") });

// Read committed whatever the database's default: which local changes are
// pending is read after the apply lock, by statements that must see every
// writer that committed while we waited for it (see localIndex.ts).
const BEGIN_DURABLE = "BEGIN ISOLATION LEVEL READ COMMITTED; SET LOCAL branchsync.applying = 'on'";

export interface ApplierOptions {
  /**
   * synchronous_commit of the transactions that apply batches (one of
   * PostgreSQL's values, checked by agent/config.ts). Rows and cursor commit
   * together, and a crash undoes a suffix of commits, never a middle one: a
   * branch that loses applied batches resumes from the cursor it kept and
   * the hub sends them again (invariant 1). An operator's retry of a
   * quarantined transaction is answered only once it is durable.
   */
  synchronousCommit: string;
}

export function makeApplier(pool: pg.Pool, tables: LocalTable[], opts: ApplierOptions = { synchronousCommit: APPLY_SYNCHRONOUS_COMMIT }): Applier {
  if (!SYNCHRONOUS_COMMIT.test(opts.synchronousCommit)) throw new Error(`synchronous_commit "${opts.synchronousCommit}" is not one of PostgreSQL's values`);
  const BEGIN_APPLY = `${BEGIN_DURABLE}; SET LOCAL synchronous_commit = ${opts.synchronousCommit}`;
  const sql = new Map<string, TableSql & { idx: number }>();
  let index = makeLocalIndex();
  tables.forEach((t, idx) => sql.set(t.name, { ...tableSql(t), idx }));
  let open: pg.PoolClient | null = null;
  let locked = false;
  /** A chunked transaction that failed: its remaining chunks are passed over, then it is quarantined. */
  let skipping: { seq: bigint; error: string; sqlstate: string } | null = null;
  /**
   * The lowest sequence number recorded on a local transaction still in
   * _branchsync.txns (null: none; undefined: not known yet). Passed ones are
   * deleted when the cursor moves, which a branch that only receives never
   * needs: two DELETEs were a fifth of its cost per batch.
   */
  let lowestRecorded: bigint | null | undefined;
  /** The cursor as the last apply (or the session's start) left it; null: not known. */
  let cursorAt: bigint | null = null;

  const statementOf = (table: string) => {
    const s = sql.get(table);
    if (!s) throw new ApplyError(`received a change for ${table}, which this branch does not track`);
    return s;
  };

  async function applyChanges(c: pg.PoolClient, changes: Change[]) {
    for (const run of runsOf(changes)) {
      const s = statementOf(run.table);
      await c.query({ name: `bs-${run.del ? "del" : "up"}-${s.idx}`, text: run.del ? s.del : s.upsert, values: [run.json] });
    }
  }

  const wanted = (local: LocalVersions | null, t: Transaction) => t.changes.filter((ch) => !local || !supersededLocally(local, ch, t.seq));

  async function quarantine(c: pg.PoolClient, t: Transaction, err: { error: string; sqlstate: string }, whole: boolean): Promise<Quarantined> {
    const raw = (t as Transaction & { raw?: Buffer }).raw;
    const body = whole ? raw ?? Buffer.from(toBinary(TransactionSchema, t)) : null;
    await c.query(
      `INSERT INTO _branchsync.quarantine(seq, origin_branch, origin_txn, body, error, sqlstate) VALUES ($1, $2, $3, $4, $5, $6)
       ON CONFLICT (seq) DO UPDATE SET error = excluded.error, sqlstate = excluded.sqlstate, status = 'quarantined', reported = false`,
      [t.seq.toString(), t.originBranch, t.originTxn.toString(), body, err.error, err.sqlstate]);
    return { seq: t.seq, originBranch: t.originBranch, originTxn: t.originTxn, ...err };
  }

  /**
   * Applies the batch's transactions. Fast: consecutive transactions'
   * changes merge into long runs (one statement for many). Careful (after a
   * data error): one savepoint per transaction, and a failing one is
   * quarantined while the others apply.
   */
  async function applyTxns(c: pg.PoolClient, txns: Transaction[], local: LocalVersions | null, careful: boolean): Promise<Quarantined[]> {
    const out: Quarantined[] = [];
    let run: Change[] = [];
    for (const t of txns) {
      if (skipping && skipping.seq === t.seq) {
        if (t.lastChunk) { out.push(await quarantine(c, t, skipping, false)); skipping = null; }
        continue;
      }
      const chunked = !(t.chunkIndex === 0 && t.lastChunk);
      if (!careful && !chunked) { run.push(...wanted(local, t)); continue; }
      await applyChanges(c, run);
      run = [];
      // A chunked transaction's first chunk marks where it began, so a later
      // chunk's failure can undo all of it.
      if (t.chunkIndex === 0 && !t.lastChunk) await c.query("SAVEPOINT bs_chunked");
      if (!careful) { await applyChanges(c, wanted(local, t)); continue; }
      await c.query("SAVEPOINT bs_txn");
      try {
        await applyChanges(c, wanted(local, t));
        await c.query("RELEASE SAVEPOINT bs_txn");
      } catch (e) {
        if (!isDataError(e)) throw e;
        await c.query("ROLLBACK TO SAVEPOINT bs_txn");
        if (!chunked) { out.push(await quarantine(c, t, describe(e), true)); continue; }
        await c.query("ROLLBACK TO SAVEPOINT bs_chunked");
        if (t.lastChunk) out.push(await quarantine(c, t, describe(e), false));
        else skipping = { seq: t.seq, ...describe(e) };
      }
    }
    await applyChanges(c, run);
    return out;
  }

  async function begin(opening = BEGIN_APPLY): Promise<pg.PoolClient> {
    const c = await pool.connect();
    try {
      await c.query(opening);
      locked = false;
      return c;
    } catch (e) {
      c.release(true);
      throw e;
    }
  }

  async function finish(c: pg.PoolClient) {
    open = null;
    skipping = null;
    await c.query("ROLLBACK").catch(() => undefined);
    c.release();
  }

  /**
   * The hub's word on our own transactions: the sequence numbers of those
   * the batch's cursor does not pass are recorded (until it does, an
   * incoming change sequenced before them must not overwrite their rows);
   * those it passes are deleted with the cursor move (closing()).
   */
  function ownSequenced(batch: ChangeBatch) {
    const own = (batch as ChangeBatch & { ownSequenced?: { originTxn: bigint; seq: bigint }[] }).ownSequenced ?? [];
    // Only foreign changes can be superseded; batches that just move the
    // cursor past our own transactions neither check nor block writers.
    const foreign = batch.transactions.length > 0;
    // Such a batch deletes the own transactions it passes, so their
    // sequence numbers are not recorded first: that UPDATE of a hundred rows
    // every 200 ms was a burst a busy branch's latency felt.
    const passing = foreign ? [] : own.filter((o) => o.seq <= batch.cursorAfter);
    const staying = foreign ? own : own.filter((o) => o.seq > batch.cursorAfter);
    let record: string | null = null;
    if (staying.length > 0) {
      let low = staying[0].seq;
      for (const o of staying) if (o.seq < low) low = o.seq;
      if (lowestRecorded !== undefined) lowestRecorded = lowestRecorded === null || low < lowestRecorded ? low : lowestRecorded;
      record = `UPDATE _branchsync.txns t SET seq = v.seq FROM unnest('{${staying.map((o) => num(o.originTxn)).join(",")}}'::xid8[],
        '{${staying.map((o) => num(o.seq)).join(",")}}'::bigint[]) AS v(txid, seq) WHERE t.txid = v.txid`;
    }
    return { foreign, passing, staying, record };
  }

  /**
   * The statements that end a whole batch: the cursor moves, and local
   * transactions it passed can no longer be overtaken, so they go. With
   * `low`, the result named "low" is the lowest sequence still recorded.
   */
  function closing(batch: ChangeBatch, passing: { originTxn: bigint }[]): { sql: string; low: boolean } {
    let hlc = 0n;
    for (const t of batch.transactions) if (t.hlc > hlc) hlc = t.hlc;
    const cursor = num(batch.cursorAfter);
    const passed = `'{${passing.map((o) => num(o.originTxn)).join(",")}}'::xid8[]`;
    const state = (passing.length > 0 ? `DELETE FROM _branchsync.changes WHERE txid = ANY(${passed});
                                          DELETE FROM _branchsync.txns WHERE txid = ANY(${passed});\n` : "") +
      `SELECT _branchsync.move_cursor(${cursorAt === null ? "NULL" : num(cursorAt)}, ${cursor}, ${num(hlc)})`;
    if (cleans(batch)) {
      return {
        low: true,
        sql: `${cleanSql(cursor)};
              ${state};
              SELECT min(seq)::text AS low FROM _branchsync.txns WHERE seq IS NOT NULL;
              COMMIT`,
      };
    }
    return { low: false, sql: `${state}; COMMIT` };
  }

  /** Whether the cursor move may pass recorded own transactions (then it drops them and reports the lowest left). */
  function cleans(batch: ChangeBatch): boolean {
    return lowestRecorded === undefined || (lowestRecorded !== null && lowestRecorded <= batch.cursorAfter);
  }

  function noteLowest(low: string | null) {
    lowestRecorded = low === null ? null : BigInt(low);
  }

  function noteLowestOf(results: pg.QueryResult[]) {
    const r = results.find((x) => x.fields?.[0]?.name === "low");
    if (!r) throw new Error("the cursor move returned no lowest recorded sequence");
    noteLowest(r.rows[0].low as string | null);
  }

  /**
   * Applies a batch after `opening` (the statements that begin the local
   * transaction or savepoint). Round trips are what an apply costs on a
   * busy branch: the opening, the own-sequence update, the lock and the
   * local-version read go as one simple-protocol query (the numbers in it
   * are ours), the rows as one statement per run, the cursor with COMMIT.
   */
  async function attempt(c: pg.PoolClient, batch: ChangeBatch, careful: boolean, opening: string): Promise<ApplyResult> {
    const head = [opening];
    if (opening.includes("BEGIN")) locked = false;
    const { foreign, passing, record } = ownSequenced(batch);
    if (record) head.push(record);
    if (foreign && !locked) {
      // Waits for local writers in flight and holds off new ones while we
      // decide which incoming rows their changes supersede.
      head.push(`SELECT pg_advisory_xact_lock(${APPLY_LOCK})`);
      locked = true;
    }
    const incoming = foreign ? batch.transactions.flatMap((t) => t.changes) : [];
    if (foreign) head.push(...index.statements(incoming.map((ch) => rowIdOf(ch.table, ch.key))));
    const res = asList(await c.query(head.join(";\n")));
    let local: LocalVersions | null = null;
    if (foreign) {
      const v = index.refresh(res.at(-3)!.rows, res.at(-2)!.rows, res.at(-1)!.rows);
      local = v === "again" ? await localVersions(c, index, incoming) : v;
    }
    const quarantined = await applyTxns(c, batch.transactions, local, careful);
    const lastTxn = batch.transactions.at(-1);
    if (lastTxn && !lastTxn.lastChunk) return { cursor: null, quarantined };
    const end = closing(batch, passing);
    const r = asList(await c.query(end.sql));
    if (end.low) noteLowestOf(r);
    open = null;
    c.release();
    cursorAt = batch.cursorAfter;
    return { cursor: batch.cursorAfter, quarantined };
  }

  const oneTrip = makeOneTrip({
    tables: tables.map((t) => ({ name: t.name, ...tableSql(t, TRIP_ROWS) })),
    checkTracked: statementOf, ownSequenced, cleans, noteLowest, cursorAt: () => cursorAt, synchronousCommit: opts.synchronousCommit,
  });

  return {
    async apply(batch) {
      const fresh = !open;
      const c = open ?? await pool.connect();
      open = c;
      // An attempt that fails is undone, and so must be its bookkeeping.
      const skipped = skipping;
      try {
        const opening = fresh ? BEGIN_APPLY : "SAVEPOINT bs_batch";
        if (fresh && !skipping && oneTrip.fits(batch)) {
          if (await oneTrip.run(c, batch)) {
            // Foreign rows went in past the local-change guard: nothing the
            // index holds can still supersede them, so its keys (a whole
            // offline backlog, maybe) need not stay in memory.
            if (batch.transactions.length > 0) index = makeLocalIndex();
            open = null;
            c.release();
            cursorAt = batch.cursorAfter;
            return { cursor: batch.cursorAfter, quarantined: [] };
          }
          // Sent back: its statement's transaction is over, nothing to undo.
        }
        // A batch continuing an open chunked transaction can be undone alone.
        return await attempt(c, batch, false, opening);
      } catch (e) {
        skipping = skipped;
        if (!isDataError(e)) { await finish(c); throw e; }
      }
      // Something in the batch cannot be applied here: again, carefully.
      try {
        return await attempt(c, batch, true, fresh ? `ROLLBACK; ${BEGIN_APPLY}` : "ROLLBACK TO SAVEPOINT bs_batch");
      } catch (e) {
        await finish(c);
        throw e;
      }
    },
    resume(cursor) { cursorAt = cursor; },
    position: () => cursorAt,
    async abort() {
      skipping = null;
      cursorAt = null;
      if (open) await finish(open);
      // What the next session finds may be older than what was applied: a
      // crash of the database undoes the last commits made without waiting
      // for their flush. Learn both again from the database.
      lowestRecorded = undefined;
      index = makeLocalIndex();
    },
    busy: () => open !== null,
    async retry(seq, repair) {
      const c = await begin(BEGIN_DURABLE);
      try {
        const q = await c.query("SELECT status FROM _branchsync.quarantine WHERE seq = $1 FOR UPDATE", [seq.toString()]);
        if (q.rows.length === 0) { await finish(c); return { outcome: "failed", error: `transaction ${seq} is not quarantined at this branch` }; }
        if (q.rows[0].status !== "quarantined") { await finish(c); return { outcome: q.rows[0].status === "applied" ? "applied" : "discarded" }; }
        await c.query(`SELECT pg_advisory_xact_lock(${APPLY_LOCK})`);
        const local = await localVersions(c, makeLocalIndex(), repair.changes);
        await applyChanges(c, wanted(local, repair));
        await c.query("UPDATE _branchsync.quarantine SET status = 'applied' WHERE seq = $1", [seq.toString()]);
        await c.query("COMMIT");
        c.release();
        return { outcome: "applied" };
      } catch (e) {
        await finish(c);
        if (!isDataError(e)) throw e;
        const d = describe(e);
        await pool.query("UPDATE _branchsync.quarantine SET error = $2, sqlstate = $3 WHERE seq = $1", [seq.toString(), d.error, d.sqlstate]);
        return { outcome: "failed", error: d.error };
      }
    },
    async discard(seq) {
      const r = await pool.query("UPDATE _branchsync.quarantine SET status = 'discarded' WHERE seq = $1 AND status = 'quarantined' RETURNING 1", [seq.toString()]);
      if (r.rowCount === 0) {
        const q = await pool.query("SELECT status FROM _branchsync.quarantine WHERE seq = $1", [seq.toString()]);
        if (q.rows.length === 0) return { outcome: "failed", error: `transaction ${seq} is not quarantined at this branch` };
        return { outcome: q.rows[0].status === "applied" ? "applied" : "discarded" };
      }
      return { outcome: "discarded" };
    },
  };
}
