/**
 * Incoming changes grouped into runs: consecutive changes to one table of
 * one kind (upsert or delete) become one statement over a JSON array of
 * row images, however many source transactions they came from.
 */
import { Op, type Change } from "../../gen/branchsync/v1/sync_pb.ts";

export interface Run {
  table: string;
  del: boolean;
  /**
   * Every change of the run inserted its row at the origin, so the row is
   * most likely new here: worth a plain INSERT before an upsert.
   */
  fresh: boolean;
  /** The run's row images as one JSON array, for json_populate_recordset. */
  json: string;
}

export function runsOf(changes: Change[]): Run[] {
  const out: Run[] = [];
  let start = 0;
  for (let i = 1; i <= changes.length; i++) {
    const prev = changes[i - 1];
    const cur = changes[i];
    if (cur && cur.table === prev.table && (cur.op === Op.DELETE) === (prev.op === Op.DELETE)) continue;
    out.push(runOf(prev.table, prev.op === Op.DELETE, changes.slice(start, i)));
    start = i;
  }
  return out;
}

function runOf(table: string, del: boolean, changes: Change[]): Run {
  let rows: string[];
  if (del) {
    rows = changes.map((ch) => ch.row);
  } else {
    // One statement cannot upsert a key twice; the last full image wins.
    const last = new Map<string, string>();
    for (const ch of changes) last.set(ch.key, ch.row);
    rows = [...last.values()];
  }
  return { table, del, fresh: !del && changes.every((ch) => ch.op === Op.INSERT), json: `[${rows.join(",")}]` };
}

