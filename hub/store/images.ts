/**
 * Row images out of the log: the version of a row that a given sequence
 * number wrote is that transaction's last change to the row (after
 * resolution, which the log stores). Conflicts, operator resolutions and
 * quarantine repairs read rows this way, so the hub keeps no second copy
 * of every row.
 */
import type pg from "pg";
import { decodeTxn, type WireChange } from "../../lib/protowire.ts";
import { rowId, loadVersions } from "./rowState.ts";

/** About how many bytes of log bodies one query reads while looking for images. */
const PAGE_BYTES = 4 << 20;

/** For each (seq, table, key) asked, the change that seq made to the row (undefined if none). */
export async function changesAt(c: pg.ClientBase | pg.Pool, schema: string, wanted: { seq: bigint; table: string; key: string }[]): Promise<Map<string, WireChange>> {
  const out = new Map<string, WireChange>();
  if (wanted.length === 0) return out;
  const seqs = [...new Set(wanted.map((w) => w.seq.toString()))];
  const want = new Set(wanted.map((w) => `${w.seq}\u0000${rowId(w.table, w.key)}`));
  const take = (rows: { seq: string; body: Buffer }[]) => {
    for (const r of rows) {
      for (const ch of decodeTxn(r.body, 0, r.body.length).changes) {
        const id = `${r.seq}\u0000${rowId(ch.table, ch.key)}`;
        if (want.has(id)) out.set(id, ch);
      }
    }
  };
  // A transaction may have thousands of parts (an initial upload): they are
  // read in pages of about PAGE_BYTES, each decoded and dropped. The first
  // page comes with every part's size, so the common case (small
  // transactions) is one round trip; octet_length reads a stored value's
  // size without fetching it.
  const { rows: parts } = await c.query(
    `SELECT seq::text AS seq, part, n, CASE WHEN upto <= $2 OR k = 1 THEN body END AS body
       FROM (SELECT seq, part, body, octet_length(body) AS n, sum(octet_length(body)) OVER w AS upto, row_number() OVER w AS k
               FROM ${schema}.log WHERE seq = ANY($1::bigint[]) WINDOW w AS (ORDER BY seq, part)) p
      ORDER BY seq, part`, [seqs, PAGE_BYTES]);
  take(parts.filter((r) => r.body !== null));
  const rest = parts.filter((r) => r.body === null);
  for (let i = 0; i < rest.length;) {
    const page = { seq: [] as string[], part: [] as number[] };
    for (let bytes = 0; i < rest.length && (bytes === 0 || bytes + rest[i].n <= PAGE_BYTES); i++) {
      page.seq.push(rest[i].seq); page.part.push(rest[i].part); bytes += rest[i].n;
    }
    const { rows } = await c.query(
      `SELECT l.seq::text AS seq, l.body FROM unnest($1::bigint[], $2::int[]) AS w(seq, part) JOIN ${schema}.log l USING (seq, part) ORDER BY l.seq, l.part`,
      [page.seq, page.part]);
    take(rows);
  }
  return out;
}

export const imageId = (seq: bigint, table: string, key: string) => `${seq}\u0000${rowId(table, key)}`;

/**
 * The newest row image of each row the hub has a version of, by rowId:
 * null for a row that is deleted now. Rows never synced are absent.
 */
export async function currentRows(db: pg.ClientBase | pg.Pool, schema: string, rows: { table: string; key: string }[]): Promise<Map<string, string | null>> {
  const versions = await loadVersions(db, schema, rows);
  const live = rows.flatMap((r) => {
    const v = versions.get(rowId(r.table, r.key));
    return v && v.op !== "D" ? [{ seq: v.seq, table: r.table, key: r.key }] : [];
  });
  const images = await changesAt(db, schema, live);
  const out = new Map<string, string | null>();
  for (const r of rows) {
    const v = versions.get(rowId(r.table, r.key));
    if (v) out.set(rowId(r.table, r.key), v.op === "D" ? null : images.get(imageId(v.seq, r.table, r.key))?.row ?? null);
  }
  return out;
}
