/**
 * The agent's side of the capture unit format (agent/capture/install.ts
 * writes units): a unit is up to UNIT_ROWS row changes of one statement,
 * of one table and kind.
 *
 * Two layouts, told apart by `cols`:
 *  - column arrays (cols = the JSON array of column names): `keys` holds one
 *    JSON array per key column and `rows` one per column, all side by side,
 *    `[[1, 2],["a", "b"]]`. json_agg of one column looks its type up once;
 *    to_json of whole rows looked every column's type up for every row.
 *  - row images (cols NULL, units written before): `keys` is a JSON array
 *    of keys and `rows` a JSON array of row images.
 * Either way the agent hands on each key as json_build_array(key columns)
 * prints it and each row as to_json(row) prints it, byte for byte: keys are
 * compared as text at the hub and at every branch.
 */
import { splitJsonArray, splitJsonColumns } from "../../lib/jsonsplit.ts";

export interface Unit { tbl: string; keys: string; rows: string; cols: string | null }

/** Per column-name list: what goes before each value in a row image (`{"id":`, `,"sku":`). */
const prefixesOf = new Map<string, string[]>();

function prefixes(cols: string): string[] {
  let p = prefixesOf.get(cols);
  if (!p) {
    const names = JSON.parse(cols) as unknown;
    if (!Array.isArray(names) || names.length === 0 || !names.every((n) => typeof n === "string")) {
      throw new Error(`capture unit column list is not a JSON array of names: ${cols.slice(0, 200)}`);
    }
    // Column names are lowercase identifiers (introspect.ts), which JSON.stringify and to_json print alike.
    p = names.map((n, i) => `${i === 0 ? "{" : ","}${JSON.stringify(n)}:`);
    if (prefixesOf.size >= 256) prefixesOf.clear();
    prefixesOf.set(cols, p);
  }
  return p;
}

function sameLength(u: Pick<Unit, "tbl">, what: string, arrays: string[][], n: number): void {
  for (const a of arrays) if (a.length !== n) throw new Error(`capture unit of ${u.tbl} has ${a.length} ${what} for ${n} rows`);
}

/** The unit's keys, each as json_build_array of the key columns prints it (`[1]`, `[1, "x"]`). */
export function unitKeys(u: Pick<Unit, "tbl" | "keys" | "cols">): string[] {
  if (u.cols === null) return splitJsonArray(u.keys);
  const columns = splitJsonColumns(u.keys);
  if (columns.length === 0) throw new Error(`capture unit of ${u.tbl} has no key columns`);
  const n = columns[0].length;
  sameLength(u, "key values", columns, n);
  const out: string[] = new Array(n);
  if (columns.length === 1) {
    const c = columns[0];
    for (let r = 0; r < n; r++) out[r] = `[${c[r]}]`;
    return out;
  }
  for (let r = 0; r < n; r++) {
    let k = "[";
    for (let c = 0; c < columns.length; c++) k += (c === 0 ? "" : ", ") + columns[c][r];
    out[r] = k + "]";
  }
  return out;
}

/** The unit's row images, `n` of them (one per key), each as to_json(row) prints it. */
export function unitRows(u: Unit, n: number): string[] {
  if (u.cols === null) return splitJsonArray(u.rows);
  const p = prefixes(u.cols);
  const columns = splitJsonColumns(u.rows);
  if (columns.length !== p.length) throw new Error(`capture unit of ${u.tbl} has ${columns.length} column arrays for ${p.length} columns`);
  sameLength(u, "column values", columns, n);
  const out: string[] = new Array(n);
  for (let r = 0; r < n; r++) {
    let img = "";
    for (let c = 0; c < p.length; c++) img += p[c] + columns[c][r];
    out[r] = img + "}";
  }
  return out;
}
