/**
 * Removes the local transactions the hub's cursor has passed (sequenced at
 * or below `cursor`, a SQL expression) and their units: the one text for the
 * applier's careful path and for apply_trip.
 *
 * The units go by an index probe per transaction (changes_txid), not a join:
 * the queue's statistics are often those of the housekeeping VACUUM that
 * found it empty (it keeps the pages), and a join planned on those can scan
 * every unit for each passed transaction, at a branch back from offline
 * with thousands pending.
 */
export function cleanSql(cursor: string): string {
  return `DELETE FROM _branchsync.changes WHERE txid = ANY(ARRAY(SELECT txid FROM _branchsync.txns WHERE seq <= ${cursor}));
    DELETE FROM _branchsync.txns WHERE seq <= ${cursor}`;
}
