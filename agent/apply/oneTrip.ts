/**
 * The applier's fast path: a batch of whole transactions in one round trip.
 * The opening, the lock, every run (per-connection prepared statements fed
 * dollar-quoted JSON) and the cursor move go as one simple-protocol query.
 *
 * Invariant: it never overwrites a row a local change supersedes. It cannot
 * look at local changes before sending the rows, so under the exclusive
 * apply lock _branchsync.require_no_local_after aborts the whole query when
 * a local transaction is unsequenced or sequenced after an incoming one;
 * the caller then applies the batch carefully (agent/apply/applier.ts),
 * and this path rests a while.
 */
import type pg from "pg";
import type { ChangeBatch } from "../../gen/branchsync/v1/sync_pb.ts";
import { APPLY_LOCK, LOCAL_PENDING_SQLSTATE } from "../capture/install.ts";
import { runsOf, dollarQuoted } from "./runs.ts";

/** How long a branch with local changes in the way applies carefully before trying one trip again. */
export const ONE_TRIP_PAUSE_MS = 1000;

export interface OneTripDeps {
  /** The statements that open the local transaction. */
  opening: string;
  /** Per tracked table: its upsert and delete over a JSON array ($1), and its index. */
  statementOf(table: string): { upsert: string; del: string; idx: number };
  tables: { upsert: string; del: string; idx: number }[];
  /** The statement recording the batch's own sequence numbers, and the own transactions its cursor passes. */
  ownSequenced(batch: ChangeBatch): { foreign: boolean; passing: { originTxn: bigint }[]; record: string | null };
  /** The statements that move the cursor and commit; `low`: a result named "low" follows. */
  closing(batch: ChangeBatch, passing: { originTxn: bigint }[]): { sql: string; low: boolean };
  noteLowest(results: pg.QueryResult[]): void;
}

export interface OneTrip {
  /** Whether to try `batch` this way: whole transactions, and not resting. */
  fits(batch: ChangeBatch): boolean;
  /** True once applied and committed; false when local changes sent it back (the transaction is aborted, not rolled back). Data errors throw. */
  run(c: pg.PoolClient, batch: ChangeBatch): Promise<boolean>;
}

export function makeOneTrip(d: OneTripDeps): OneTrip {
  const prepared = new WeakSet<pg.PoolClient>();
  const prepare = d.tables.flatMap((s) => [
    `PREPARE bs_trip_up_${s.idx}(json) AS ${s.upsert}`, `PREPARE bs_trip_del_${s.idx}(json) AS ${s.del}`]).join(";\n");
  let pausedUntil = 0;
  return {
    fits: (batch) => Date.now() >= pausedUntil && batch.transactions.every((t) => t.chunkIndex === 0 && t.lastChunk),
    async run(c, batch) {
      if (!prepared.has(c)) {
        await c.query(prepare);
        prepared.add(c);
      }
      const parts = [d.opening];
      const { foreign, passing, record } = d.ownSequenced(batch);
      if (record) parts.push(record);
      if (foreign) {
        let low = batch.transactions[0].seq;
        for (const t of batch.transactions) if (t.seq < low) low = t.seq;
        parts.push(`SELECT pg_advisory_xact_lock(${APPLY_LOCK})`, `SELECT _branchsync.require_no_local_after(${BigInt(low).toString()})`);
      }
      for (const run of runsOf(batch.transactions.flatMap((t) => t.changes))) {
        parts.push(`EXECUTE bs_trip_${run.del ? "del" : "up"}_${d.statementOf(run.table).idx}(${dollarQuoted(run.json)})`);
      }
      const end = d.closing(batch, passing);
      parts.push(end.sql);
      try {
        const res = await c.query(parts.join(";\n")) as unknown;
        if (end.low) d.noteLowest((Array.isArray(res) ? res : [res]) as pg.QueryResult[]);
        return true;
      } catch (e) {
        if ((e as { code?: unknown }).code !== LOCAL_PENDING_SQLSTATE) throw e;
        pausedUntil = Date.now() + ONE_TRIP_PAUSE_MS;
        return false;
      }
    },
  };
}
