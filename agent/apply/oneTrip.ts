/**
 * The applier's fast path: a batch of whole transactions in one round trip.
 * One statement, `SELECT _branchsync.apply_trip($1, ...)`, runs in its own
 * transaction and does what the careful path does in three: marks the
 * session as applying, records the own sequence numbers, takes the apply
 * lock, upserts and deletes every run, moves the cursor and drops the local
 * transactions it passes. Rows travel as parameters, never in SQL text:
 * the runs as one JSON array of arrays, which costs no escaping here.
 *
 * Invariant: it never overwrites a row a local change supersedes. It cannot
 * look at local changes before sending the rows, so under the exclusive
 * apply lock _branchsync.require_no_local_after aborts the whole statement
 * when a local transaction is unsequenced or sequenced after an incoming
 * one; the caller then applies the batch carefully (agent/apply/applier.ts),
 * and this path rests a while.
 */
import type pg from "pg";
import type { ChangeBatch } from "../../gen/branchsync/v1/sync_pb.ts";
import { APPLY_LOCK, LOCAL_PENDING_SQLSTATE } from "../capture/install.ts";
import { runsOf } from "./runs.ts";
import { cleanSql } from "./clean.ts";

/** How long a branch with local changes in the way applies carefully before trying one trip again. */
export const ONE_TRIP_PAUSE_MS = 1000;

/** The plpgsql variable holding a run's rows in the function's statements. */
export const TRIP_ROWS = "bs_rows_";

export interface OneTripDeps {
  /** Per tracked table: its upsert, plain insert and delete over the JSON array in TRIP_ROWS. */
  tables: { name: string; upsert: string; insert: string; del: string }[];
  /** Throws ApplyError for a table this branch does not track. */
  checkTracked(table: string): void;
  /** Own transactions: those to record with their sequence numbers, and those the cursor passes. */
  ownSequenced(batch: ChangeBatch): { foreign: boolean; staying: { originTxn: bigint; seq: bigint }[]; passing: { originTxn: bigint }[] };
  /** Whether the cursor move should also drop passed local transactions and report the lowest recorded seq. */
  cleans(batch: ChangeBatch): boolean;
  noteLowest(low: string | null): void;
  /** Where the cursor must be for this apply to move it (null: not known, no check); see _branchsync.move_cursor. */
  cursorAt(): bigint | null;
  /** synchronous_commit of its transaction (see ApplierOptions). */
  synchronousCommit: string;
}

export interface OneTrip {
  /** Whether to try `batch` this way: whole transactions, and not resting. */
  fits(batch: ChangeBatch): boolean;
  /** True once applied and committed; false when local changes sent it back. Data errors throw. */
  run(c: pg.PoolClient, batch: ChangeBatch): Promise<boolean>;
}

/** A run's kind in apply_trip's p_kind: rows inserted at their origin, other upserts, deletes. */
const KIND = { fresh: "I", upsert: "U", del: "D" } as const;

/**
 * A fresh run (every row inserted at its origin) goes in by plain INSERT,
 * which spares the speculative insertion ON CONFLICT pays for every row (a
 * quarter of a branch's apply time for inserts). Should a row be here after
 * all (the same key inserted here, or on two branches), the block's
 * subtransaction undoes the INSERT and the run is upserted.
 */
function functionSql(tables: OneTripDeps["tables"], synchronousCommit: string): string {
  const runs = tables.map((t, i) => `${i === 0 ? "IF" : "ELSIF"} p_tbl[i] = ${i} AND p_kind[i] = '${KIND.fresh}' THEN
        BEGIN ${t.insert}; EXCEPTION WHEN unique_violation THEN ${t.upsert}; END;
      ELSIF p_tbl[i] = ${i} AND p_kind[i] = '${KIND.upsert}' THEN ${t.upsert};
      ELSIF p_tbl[i] = ${i} THEN ${t.del};`).join("\n      ");
  // The signature before run kinds, which CREATE OR REPLACE would leave beside this one.
  return `DROP FUNCTION IF EXISTS _branchsync.apply_trip(bigint, xid8[], bigint[], xid8[], bigint, bigint, boolean, int[], boolean[], json);
  DROP FUNCTION IF EXISTS _branchsync.apply_trip(bigint, xid8[], bigint[], xid8[], bigint, bigint, boolean, int[], "char"[], json);
  CREATE OR REPLACE FUNCTION _branchsync.apply_trip(p_low bigint, p_own_txid xid8[], p_own_seq bigint[], p_passing xid8[],
    p_cursor bigint, p_hlc bigint, p_clean boolean, p_tbl int[], p_kind "char"[], p_rows json, p_from bigint) RETURNS text LANGUAGE plpgsql AS $f$
  DECLARE ${TRIP_ROWS} json; i bigint; low text;
  BEGIN
    -- Its local-change check must see writers that committed while it
    -- waited for the lock; under a stricter default the careful path,
    -- which begins read committed, does it.
    IF current_setting('transaction_isolation') <> 'read committed' THEN
      RAISE EXCEPTION 'one trip needs read committed' USING ERRCODE = '${LOCAL_PENDING_SQLSTATE}';
    END IF;
    PERFORM set_config('branchsync.applying', 'on', true);
    PERFORM set_config('synchronous_commit', '${synchronousCommit}', true);
    IF cardinality(p_own_txid) > 0 THEN
      UPDATE _branchsync.txns t SET seq = v.seq FROM unnest(p_own_txid, p_own_seq) AS v(txid, seq) WHERE t.txid = v.txid;
    END IF;
    IF p_low IS NOT NULL THEN
      PERFORM pg_advisory_xact_lock(${APPLY_LOCK});
      PERFORM _branchsync.require_no_local_after(p_low);
    END IF;
    FOR ${TRIP_ROWS}, i IN SELECT e.v, e.n FROM json_array_elements(p_rows) WITH ORDINALITY AS e(v, n) LOOP
      ${runs}
      ELSE RAISE EXCEPTION 'no table %', p_tbl[i];
      END IF;
    END LOOP;
    IF cardinality(p_passing) > 0 THEN
      DELETE FROM _branchsync.changes WHERE txid = ANY(p_passing);
      DELETE FROM _branchsync.txns WHERE txid = ANY(p_passing);
    END IF;
    PERFORM _branchsync.move_cursor(p_from, p_cursor, p_hlc);
    IF p_clean THEN
      ${cleanSql("p_cursor")};
      SELECT min(seq)::text INTO low FROM _branchsync.txns WHERE seq IS NOT NULL;
    END IF;
    RETURN low;
  END $f$`;
}

export function makeOneTrip(d: OneTripDeps): OneTrip {
  const index = new Map(d.tables.map((t, i) => [t.name, i]));
  let installed = false;
  let pausedUntil = 0;
  return {
    fits: (batch) => Date.now() >= pausedUntil && batch.transactions.every((t) => t.chunkIndex === 0 && t.lastChunk),
    async run(c, batch) {
      if (!installed) {
        // Its statements depend on the tracked tables: written once per start.
        await c.query(functionSql(d.tables, d.synchronousCommit));
        installed = true;
      }
      const { foreign, staying, passing } = d.ownSequenced(batch);
      let low: bigint | null = null;
      let hlc = 0n;
      for (const t of batch.transactions) {
        if (low === null || t.seq < low) low = t.seq;
        if (t.hlc > hlc) hlc = t.hlc;
      }
      const runs = runsOf(batch.transactions.flatMap((t) => t.changes));
      for (const r of runs) d.checkTracked(r.table);
      const clean = d.cleans(batch);
      try {
        const { rows } = await c.query({
          name: "bs-apply-trip",
          text: "SELECT _branchsync.apply_trip($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) AS low",
          values: [
            foreign ? low!.toString() : null, staying.map((o) => o.originTxn.toString()), staying.map((o) => o.seq.toString()),
            passing.map((o) => o.originTxn.toString()), batch.cursorAfter.toString(), hlc.toString(), clean,
            runs.map((r) => index.get(r.table)!), `{${runs.map((r) => (r.del ? KIND.del : r.fresh ? KIND.fresh : KIND.upsert)).join(",")}}`,
            `[${runs.map((r) => r.json).join(",")}]`, d.cursorAt()?.toString() ?? null,
          ],
        });
        if (clean) d.noteLowest(rows[0].low);
        return true;
      } catch (e) {
        if ((e as { code?: unknown }).code !== LOCAL_PENDING_SQLSTATE) throw e;
        pausedUntil = Date.now() + ONE_TRIP_PAUSE_MS;
        return false;
      }
    },
  };
}
