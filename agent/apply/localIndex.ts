/**
 * Which rows have local changes the hub's cursor has not passed yet, and how
 * far the hub has sequenced them: what decides whether an incoming change
 * is skipped (hub order wins, see applier.ts).
 *
 * Kept across batches instead of read whole for each one. A branch back
 * from a long time offline has its whole backlog pending while the other
 * branches' changes keep arriving, and reading and parsing every pending key
 * for every incoming batch made its catch-up quadratic, with the shop's
 * writers held off by the apply lock meanwhile.
 *
 * Why it stays exact:
 *  - A capture unit never changes once committed, and its id (bigserial) is
 *    never reused, so a unit read once holds until its transaction goes.
 *  - Read under the exclusive apply lock, every unit with an id at or below
 *    the highest seen so far is already known: local writers hold that lock
 *    shared from their first statement to their commit, so none was in
 *    progress at the previous read, and later ones take larger ids.
 *  - So a transaction read once gets no units later, and only those new
 *    since the previous read can have units the index has not seen.
 *  - Several paths sequence and delete transactions, so which are left and
 *    their sequence numbers are read every time for those that decide the
 *    incoming rows (every transaction indexed under one of them) and the
 *    new ones; every FULL_EVERY reads, for all, which also forgets the
 *    deleted ones nothing asked about.
 *  - That needs read committed (each statement's snapshot taken after the
 *    lock; the applier begins so) and ids handed out in order (the sequence
 *    has CACHE 1, set at install).
 *  - A queue emptied or renumbered by hand (TRUNCATE, RESTART IDENTITY, ALTER
 *    SEQUENCE ... RESTART: new storage for the table or its sequence; setval
 *    below the highest id seen) makes it read everything again, and so does
 *    a pending transaction none of whose units it has seen, found by the
 *    next read of all transactions (setval, then more units than the highest
 *    id seen before this reads: the only case it catches late).
 */
import { unitKeys } from "../capture/units.ts";

/** The newest local version of a row: its sequence number, null while unsequenced (newest of all), undefined when none is pending. */
export interface LocalVersions { get(row: string): bigint | null | undefined }

export const rowIdOf = (table: string, key: string) => `${table}\u0000${key}`;

export interface UnitRow { id: string; txid: string; tbl: string; keys: string; cols: string | null }
export interface TxnRow { txid: string; seq: string | null }
/** The sequence's last value, and the storage of the queue and of its sequence (new after TRUNCATE or RESTART). */
export interface TopRow { id: string; storage: string }

/** Reads between two that look at every pending transaction. */
const FULL_EVERY = 64;

export interface LocalIndex {
  /**
   * For incoming changes to `rows` (rowIdOf): run in this order under the
   * exclusive apply lock, after any sequence recording; feed their rows to refresh().
   */
  statements(rows: Iterable<string>): [units: string, txns: string, top: string];
  /** The versions as of those reads, null when nothing is pending, or "again" when statements() must be run again (a full read). */
  refresh(units: UnitRow[], txns: TxnRow[], top: TopRow[]): LocalVersions | null | "again";
}

export function makeLocalIndex(): LocalIndex {
  const rowsOfTxn = new Map<string, string[]>();
  const txnsOfRow = new Map<string, Set<string>>();
  let seqOf = new Map<string, bigint | null>();
  let maxId = 0n;
  /** The next read looks at every transaction; set by statements(). */
  let full = true;
  let reads = 0;
  /** Transactions the last statements() asked about by txid. */
  let asked: string[] = [];
  /** Pending transactions a full read found without units (none should be): not a reason to read everything again. */
  let unitless = new Set<string>();
  /** The queue's storage as of the previous read (TopRow.storage). */
  let storage = "";
  /** maxId when statements() was called: a full read from 0 is what there is. */
  let startMax = 0n;

  function forget(txid: string) {
    for (const row of rowsOfTxn.get(txid) ?? []) {
      const txns = txnsOfRow.get(row);
      txns?.delete(txid);
      if (txns?.size === 0) txnsOfRow.delete(row);
    }
    rowsOfTxn.delete(txid);
  }

  function add(u: UnitRow) {
    const id = BigInt(u.id);
    if (id > maxId) maxId = id;
    // Gone between the two reads (set aside as rejected): nothing to index.
    if (!seqOf.has(u.txid)) return;
    let rows = rowsOfTxn.get(u.txid);
    if (!rows) rowsOfTxn.set(u.txid, rows = []);
    for (const key of unitKeys(u)) {
      const row = rowIdOf(u.tbl, key);
      rows.push(row);
      let txns = txnsOfRow.get(row);
      if (!txns) txnsOfRow.set(row, txns = new Set());
      txns.add(u.txid);
    }
  }

  function restart(): "again" {
    rowsOfTxn.clear();
    txnsOfRow.clear();
    maxId = 0n;
    full = true;
    return "again";
  }

  const versions: LocalVersions = {
    get(row) {
      const txns = txnsOfRow.get(row);
      if (!txns) return undefined;
      let newest: bigint | undefined;
      for (const t of txns) {
        const seq = seqOf.get(t);
        if (seq === null) return null;
        if (seq !== undefined && (newest === undefined || seq > newest)) newest = seq;
      }
      return newest;
    },
  };

  return {
    statements(rows) {
      if (++reads % FULL_EVERY === 0) full = true;
      startMax = maxId;
      const newer = `t.last_id > ${maxId}`;
      let which = "";
      asked = [];
      if (!full) {
        const txids = new Set<string>();
        for (const row of rows) for (const t of txnsOfRow.get(row) ?? []) txids.add(t);
        asked = [...txids];
        which = ` t WHERE ${newer}${asked.length > 0 ? ` OR t.txid = ANY('{${asked.map((t) => BigInt(t)).join(",")}}'::xid8[])` : ""}`;
      }
      return [
        // Each transaction's units by a probe of changes_txid (OFFSET 0 keeps
        // the lookup per transaction): with the statistics of the emptied
        // queue a join was planned as a nested loop filtering every unit for
        // every transaction, minutes at a 20,000-transaction backlog.
        `SELECT c.id::text AS id, c.txid::text AS txid, c.tbl, c.keys, c.cols
           FROM _branchsync.txns t CROSS JOIN LATERAL (
                SELECT c.id, c.txid, c.tbl, c.keys, c.cols FROM _branchsync.changes c
                 WHERE c.txid = t.txid AND c.id > ${maxId} OFFSET 0) c
          WHERE ${newer}`,
        `SELECT txid::text AS txid, seq::text AS seq FROM _branchsync.txns${which}`,
        `SELECT last_value::text AS id, pg_relation_filenode('_branchsync.changes') || '/' || pg_relation_filenode('_branchsync.changes_id_seq') AS storage
           FROM _branchsync.changes_id_seq`,
      ];
    },
    refresh(units, txns, top) {
      const wasFull = full;
      full = false;
      const renumbered = storage !== top[0].storage || BigInt(top[0].id) < maxId;
      storage = top[0].storage;
      if (renumbered && startMax > 0n) return restart();
      const found = new Map(txns.map((t) => [t.txid, t.seq === null ? null : BigInt(t.seq)]));
      if (wasFull) {
        seqOf = found;
        for (const txid of [...rowsOfTxn.keys()]) if (!seqOf.has(txid)) forget(txid);
      } else {
        // Asked for by txid and not returned: gone.
        for (const t of asked) if (!found.has(t)) { seqOf.delete(t); forget(t); }
        for (const [t, seq] of found) seqOf.set(t, seq);
      }
      for (const u of units) add(u);
      if (wasFull) {
        const unseen = [...seqOf.keys()].filter((t) => !rowsOfTxn.has(t));
        if (startMax > 0n && unseen.some((t) => !unitless.has(t))) return restart();
        unitless = new Set(unseen);
      }
      return seqOf.size === 0 ? null : versions;
    },
  };
}
