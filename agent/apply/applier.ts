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
 *  - Exact values: rows go to PostgreSQL as the to_jsonb text they were
 *    captured as, and jsonb_populate_recordset parses each value with its
 *    column type's own input function; nothing passes through a JS number.
 */
import type pg from "pg";
import { Op, type ChangeBatch, type Change } from "../../gen/branchsync/v1/sync_pb.ts";
import { quoteIdent } from "../../lib/ident.ts";
import { markSequenced } from "../capture/reader.ts";
import { APPLY_LOCK } from "../capture/install.ts";
import type { LocalTable } from "../capture/introspect.ts";

interface TableSql { upsert: string; del: string }

function tableSql(t: LocalTable): TableSql {
  const q = `${quoteIdent(t.schema)}.${quoteIdent(t.table)}`;
  const pk = t.primaryKey.map(quoteIdent).join(", ");
  const rest = t.columns.filter((c) => !t.primaryKey.includes(c.name)).map((c) => quoteIdent(c.name));
  const onConflict = rest.length === 0 ? "DO NOTHING" : `DO UPDATE SET ${rest.map((c) => `${c} = EXCLUDED.${c}`).join(", ")}`;
  const cols = t.columns.map((c) => quoteIdent(c.name)).join(", ");
  const json = t.columns.filter((c) => c.type === "json" || c.type === "jsonb");
  // json/jsonb arrive as strings of their text (see capture); cast them back.
  const source = json.length === 0
    ? `SELECT ${cols} FROM jsonb_populate_recordset(NULL::${q}, $1::jsonb)`
    : `SELECT ${t.columns.map((c) => (json.includes(c) ? `(bs_e_.v ->> '${c.name}')::${c.type}` : `bs_r_.${quoteIdent(c.name)}`)).join(", ")}
         FROM jsonb_array_elements($1::jsonb) AS bs_e_(v),
              LATERAL jsonb_populate_record(NULL::${q}, bs_e_.v - ARRAY[${json.map((c) => `'${c.name}'`).join(", ")}]) AS bs_r_`;
  return {
    upsert: `INSERT INTO ${q} (${cols}) ${source} ON CONFLICT (${pk}) ${onConflict}`,
    del: `DELETE FROM ${q} WHERE (${pk}) IN (SELECT ${pk} FROM jsonb_populate_recordset(NULL::${q}, $1::jsonb))`,
  };
}

export class ApplyError extends Error {}

/** Sequence of the newest local change per row; null = not yet sequenced (newest of all). */
type LocalVersions = Map<string, bigint | null>;

async function localVersions(c: pg.PoolClient): Promise<LocalVersions | null> {
  const { rows } = await c.query({
    name: "bs-local-versions",
    text: `SELECT c.tbl, e.k::text AS key, t.seq::text AS seq
             FROM _branchsync.txns t JOIN _branchsync.changes c USING (txid), jsonb_array_elements(c.keys) AS e(k)`,
  });
  if (rows.length === 0) return null;
  const m: LocalVersions = new Map();
  for (const r of rows) {
    const k = `${r.tbl}\u0000${r.key}`;
    const seq = r.seq === null ? null : BigInt(r.seq);
    const prev = m.get(k);
    if (prev === undefined || (prev !== null && (seq === null || seq > prev))) m.set(k, seq);
  }
  return m;
}

function supersededLocally(local: LocalVersions, ch: Change, seq: bigint): boolean {
  const v = local.get(`${ch.table}\u0000${ch.key}`);
  return v !== undefined && (v === null || v > seq);
}

export interface Applier {
  /** Applies a batch; returns the new cursor once committed, or null while a chunked transaction is still open. */
  apply(batch: ChangeBatch): Promise<bigint | null>;
  /** Rolls back a half-received chunked transaction (stream ended). */
  abort(): Promise<void>;
}

export function makeApplier(pool: pg.Pool, tables: LocalTable[]): Applier {
  const sql = new Map<string, TableSql & { idx: number }>();
  tables.forEach((t, idx) => sql.set(t.name, { ...tableSql(t), idx }));
  let open: pg.PoolClient | null = null;
  let locked = false;

  async function runOf(c: pg.PoolClient, table: string, del: boolean, changes: Change[]) {
    const s = sql.get(table);
    if (!s) throw new ApplyError(`received a change for ${table}, which this branch does not track`);
    let rows: string[];
    if (del) {
      rows = changes.map((ch) => ch.row);
    } else {
      // One statement cannot upsert a key twice; the last full image wins.
      const last = new Map<string, string>();
      for (const ch of changes) last.set(ch.key, ch.row);
      rows = [...last.values()];
    }
    await c.query({ name: `bs-${del ? "del" : "up"}-${s.idx}`, text: del ? s.del : s.upsert, values: [`[${rows.join(",")}]`] });
  }

  async function applyChanges(c: pg.PoolClient, changes: Change[]) {
    let start = 0;
    for (let i = 1; i <= changes.length; i++) {
      const prev = changes[i - 1];
      const cur = changes[i];
      if (cur && cur.table === prev.table && (cur.op === Op.DELETE) === (prev.op === Op.DELETE)) continue;
      await runOf(c, prev.table, prev.op === Op.DELETE, changes.slice(start, i));
      start = i;
    }
  }

  return {
    async apply(batch) {
      if (!open) {
        open = await pool.connect();
        try {
          // One round trip: a simple-protocol query may hold several statements.
          // One round trip; the lock (see below) comes along when needed.
          locked = batch.transactions.length > 0;
          await open.query(`BEGIN; SET LOCAL branchsync.applying = 'on'${locked ? `; SELECT pg_advisory_xact_lock(${APPLY_LOCK})` : ""}`);
        } catch (e) {
          open.release(true);
          open = null;
          throw e;
        }
      }
      const c = open;
      try {
        const own = (batch as ChangeBatch & { ownSequenced?: { originTxn: bigint; seq: bigint }[] }).ownSequenced ?? [];
        if (own.length > 0) await markSequenced(c, own.map((o) => ({ txid: o.originTxn.toString(), seq: o.seq })));
        // Only foreign changes can be superseded; batches that just move the
        // cursor past our own transactions neither check nor block writers.
        let local: LocalVersions | null = null;
        if (batch.transactions.length > 0) {
          if (!locked) {
            // Waits for local writers in flight and holds off new ones while
            // we decide which incoming rows their changes supersede.
            await c.query(`SELECT pg_advisory_xact_lock(${APPLY_LOCK})`);
            locked = true;
          }
          local = await localVersions(c);
        }
        // All of the batch lands in this one local transaction anyway, so
        // consecutive transactions' changes form longer runs: one statement
        // for many source transactions, in sequence order.
        const all: Change[] = [];
        for (const t of batch.transactions) {
          for (const ch of t.changes) if (!local || !supersededLocally(local, ch, t.seq)) all.push(ch);
        }
        await applyChanges(c, all);
        const lastTxn = batch.transactions.at(-1);
        if (lastTxn && !lastTxn.lastChunk) return null;
        // The cursor moves, and local transactions it passed can no longer
        // be overtaken, so they go: one statement.
        await c.query({
          name: "bs-cursor",
          text: `WITH gone AS (DELETE FROM _branchsync.changes c USING _branchsync.txns t WHERE c.txid = t.txid AND t.seq <= $1),
                      done AS (DELETE FROM _branchsync.txns WHERE seq <= $1)
                 UPDATE _branchsync.state SET cursor = $1`,
          values: [batch.cursorAfter.toString()],
        });
        await c.query("COMMIT");
        open = null;
        c.release();
        return batch.cursorAfter;
      } catch (e) {
        open = null;
        await c.query("ROLLBACK").catch(() => undefined);
        c.release();
        throw e;
      }
    },
    async abort() {
      if (!open) return;
      const c = open;
      open = null;
      await c.query("ROLLBACK").catch(() => undefined);
      c.release();
    },
  };
}
