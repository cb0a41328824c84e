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
  // A transaction may have thousands of parts (an initial upload): they are
  // read in pages of about PAGE_BYTES, each decoded and dropped.
  const { rows: sizes } = await c.query(
    `SELECT seq::text AS seq, part, octet_length(body) AS n FROM ${schema}.log WHERE seq = ANY($1::bigint[]) ORDER BY seq, part`, [seqs]);
  for (let i = 0; i < sizes.length;) {
    const page = { seq: [] as string[], part: [] as number[] };
    for (let bytes = 0; i < sizes.length && (bytes === 0 || bytes + sizes[i].n <= PAGE_BYTES); i++) {
      page.seq.push(sizes[i].seq); page.part.push(sizes[i].part); bytes += sizes[i].n;
    }
    const { rows } = await c.query(
      `SELECT l.seq::text AS seq, l.body FROM unnest($1::bigint[], $2::int[]) AS w(seq, part) JOIN ${schema}.log l USING (seq, part) ORDER BY l.seq, l.part`,
      [page.seq, page.part]);
    for (const r of rows) {
      const t = decodeTxn(r.body, 0, r.body.length);
      for (const ch of t.changes) {
        const id = `${r.seq}\u0000${rowId(ch.table, ch.key)}`;
        if (want.has(id)) out.set(id, ch);
      }
    }
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
