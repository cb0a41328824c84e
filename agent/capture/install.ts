/**
 * Installs change capture in the branch database: the _branchsync schema
 * (local change log, transaction index, cursor) and statement-level
 * triggers with transition tables on every tracked table. Statement-level
 * triggers write a 100-row statement's changes with one INSERT ... SELECT,
 * which is what keeps capture cheap for the writer.
 *
 * Echo suppression: the agent applies incoming changes with the setting
 * branchsync.applying = on, and the triggers record nothing then.
 */
import type pg from "pg";
import { createHash } from "node:crypto";
import { quoteIdent } from "../../lib/ident.ts";
import type { LocalTable } from "./introspect.ts";

export const NOTIFY_CHANNEL = "branchsync_changes";

/**
 * A transaction's row in txns for a statement's units (plpgsql, with x the
 * txid, m the statement's highest unit id, c its row changes), added to by its
 * later statements, and the wake-up for the agent. One text for the capture
 * triggers (inline: a nested call cost 29k of the 597k instructions a
 * single-row update's capture took) and for note_txn. One read of state.
 */
const NOTE_TXN_SQL = `INSERT INTO _branchsync.txns(txid, last_id, n, base, seen_hlc)
    SELECT x, m, c, coalesce(s.cursor, 0), coalesce(s.hlc, 0) FROM (VALUES (1)) v LEFT JOIN _branchsync.state s ON true
    ON CONFLICT (txid) DO UPDATE SET last_id = greatest(_branchsync.txns.last_id, excluded.last_id), n = _branchsync.txns.n + excluded.n;
  PERFORM pg_notify('${NOTIFY_CHANNEL}', '');`;

/** Advisory lock key shared by local writers and held exclusively by the applier. */
export const APPLY_LOCK = 0x62726e63;

/** SQLSTATE of _branchsync.require_no_local_after: not a data error, just "take the careful path". */
export const LOCAL_PENDING_SQLSTATE = "BSLCL";

/** SQLSTATE of _branchsync.move_cursor: the cursor is not where the session left it (not a data error: start again). */
export const CURSOR_MOVED_SQLSTATE = "BSCUR";

/** Most row changes in one capture unit (and so the smallest upstream chunk). */
export const UNIT_ROWS = 250;

const BASE_DDL = `
CREATE SCHEMA IF NOT EXISTS _branchsync;
-- One row per "unit": up to ${UNIT_ROWS} row changes of one statement, of one
-- kind, as JSON arrays of keys and rows side by side (agent/capture/units.ts).
-- Writing one unit instead of a hundred rows (each with index entries) is
-- what keeps capture cheap for the writer; the agent expands units when it
-- reads.
CREATE TABLE IF NOT EXISTS _branchsync.changes (
  id bigserial NOT NULL,
  txid xid8 NOT NULL,
  tbl text NOT NULL,
  op "char" NOT NULL,
  n int NOT NULL,
  keys text NOT NULL,
  rows text NOT NULL);
CREATE INDEX IF NOT EXISTS changes_txid ON _branchsync.changes (txid, id);
-- Ids in the order they are handed out, across sessions: the applier's index
-- of local changes reads only ids above the highest it has seen.
ALTER SEQUENCE _branchsync.changes_id_seq CACHE 1;
-- One row per captured local transaction. last_id orders transactions so
-- that one which depends on another (touched a row after it committed)
-- always comes after it.
CREATE TABLE IF NOT EXISTS _branchsync.txns (
  txid xid8 PRIMARY KEY,
  last_id bigint NOT NULL,
  n int NOT NULL,
  started_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX IF NOT EXISTS txns_last_id ON _branchsync.txns (last_id);
-- The tenant sequence number the hub gave the transaction. A sequenced
-- transaction stays here until the branch's cursor passes it: until then an
-- incoming change sequenced before it must not overwrite its rows.
ALTER TABLE _branchsync.txns ADD COLUMN IF NOT EXISTS seq bigint;
-- What the sender looks for: transactions not yet sequenced, in order.
CREATE INDEX IF NOT EXISTS txns_unsent ON _branchsync.txns (last_id) WHERE seq IS NULL;
-- What the transaction was based on, read when it first wrote: the cursor
-- (Transaction.base_seq) and the newest HLC applied here by then, which its
-- own HLC must exceed. Writers hold the apply lock shared until commit, so
-- neither moves during the transaction.
ALTER TABLE _branchsync.txns ADD COLUMN IF NOT EXISTS base bigint NOT NULL DEFAULT 0;
ALTER TABLE _branchsync.txns ADD COLUMN IF NOT EXISTS seen_hlc bigint NOT NULL DEFAULT 0;
-- Both are queues that empty and fill again all day, so VACUUM (the agent's,
-- see housekeeping.ts, or autovacuum) must not cut their empty tail pages
-- off: that takes an ACCESS EXCLUSIVE lock, and every capturing writer (a
-- till's sale) waited on it, up to 20 ms before VACUUM gives way; the
-- agent's VACUUM took 78 ms instead of 13 under a 500 tx/s load.
ALTER TABLE _branchsync.changes SET (vacuum_truncate = false, toast.vacuum_truncate = false);
ALTER TABLE _branchsync.txns SET (vacuum_truncate = false);
-- Updates: the columns each row change changed, with old values ({"qty":[5]}),
-- as a JSON array. text, not json: the trigger builds it by concatenation,
-- valid by construction, and a json column would parse it all again.
ALTER TABLE _branchsync.changes ADD COLUMN IF NOT EXISTS prevs text;
-- Units are json, not jsonb: the writer's trigger then only concatenates
-- text, and the agent reads it back without a jsonb-to-text conversion.
-- Capture is what the writer pays for, so this is worth a third of it.
DO $$ BEGIN
  IF (SELECT atttypid = 'jsonb'::regtype FROM pg_attribute WHERE attrelid = '_branchsync.changes'::regclass AND attname = 'rows') THEN
    ALTER TABLE _branchsync.changes ALTER COLUMN keys TYPE json USING keys::text::json,
      ALTER COLUMN rows TYPE json USING rows::text::json, ALTER COLUMN prevs TYPE text USING prevs::text;
  END IF;
  IF (SELECT atttypid <> 'text'::regtype FROM pg_attribute WHERE attrelid = '_branchsync.changes'::regclass AND attname = 'prevs') THEN
    ALTER TABLE _branchsync.changes ALTER COLUMN prevs TYPE text USING prevs::text;
  END IF;
  -- Keys and rows as column arrays (cols below) are built by concatenation too.
  IF (SELECT atttypid <> 'text'::regtype FROM pg_attribute WHERE attrelid = '_branchsync.changes'::regclass AND attname = 'rows') THEN
    ALTER TABLE _branchsync.changes ALTER COLUMN rows TYPE text USING rows::text, ALTER COLUMN keys TYPE text USING keys::text;
  END IF;
END $$;
-- The column names of a unit whose keys and rows are one JSON array per
-- column ([[1, 2],["a", "b"]]), in that order; NULL for units written
-- before, whose keys are a JSON array of keys and rows one of row images
-- (agent/capture/units.ts). Units carry the names because a unit can
-- outlive the table's shape it was captured with.
ALTER TABLE _branchsync.changes ADD COLUMN IF NOT EXISTS cols text;
CREATE TABLE IF NOT EXISTS _branchsync.state (
  one boolean PRIMARY KEY DEFAULT true CHECK (one),
  cursor bigint NOT NULL DEFAULT 0,
  tenant_id text NOT NULL,
  branch_id text NOT NULL,
  -- Hash of the capture DDL last installed, so a restart with unchanged
  -- tables takes no ACCESS EXCLUSIVE locks on them.
  capture_hash text);
ALTER TABLE _branchsync.state ADD COLUMN IF NOT EXISTS capture_hash text;
-- The newest HLC of any transaction applied here.
ALTER TABLE _branchsync.state ADD COLUMN IF NOT EXISTS hlc bigint NOT NULL DEFAULT 0;
-- Downstream transactions that could not be applied here (NACKed), whole,
-- with the error; later ones were applied. status: quarantined, applied
-- (an operator's retry succeeded), discarded.
CREATE TABLE IF NOT EXISTS _branchsync.quarantine (
  seq bigint PRIMARY KEY,
  origin_branch text NOT NULL,
  origin_txn bigint NOT NULL,
  body bytea,
  error text NOT NULL,
  sqlstate text NOT NULL,
  status text NOT NULL DEFAULT 'quarantined',
  reported boolean NOT NULL DEFAULT false,
  quarantined_at timestamptz NOT NULL DEFAULT now());
-- Local transactions the hub rejected, kept whole for an operator.
CREATE TABLE IF NOT EXISTS _branchsync.rejected (
  txid xid8 NOT NULL,
  tbl text NOT NULL,
  op "char" NOT NULL,
  n int NOT NULL,
  keys jsonb NOT NULL,
  rows jsonb NOT NULL,
  error text NOT NULL,
  rejected_at timestamptz NOT NULL DEFAULT now());
-- plpgsql, not sql: a sql function's statements are parsed and planned on
-- every call: 79 us instead of 18 us for every captured statement.
CREATE OR REPLACE FUNCTION _branchsync.note_txn(x xid8, m bigint, c int) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  ${NOTE_TXN_SQL}
END $$;
-- lz4 is cheaper than the default pglz for these write-once values; not
-- every build has it, and then the default stays.
DO $$ BEGIN
  ALTER TABLE _branchsync.changes ALTER COLUMN rows SET COMPRESSION lz4, ALTER COLUMN keys SET COMPRESSION lz4,
    ALTER COLUMN prevs SET COMPRESSION lz4;
EXCEPTION WHEN OTHERS THEN NULL;
END $$;
-- Local writers take this lock shared (before their statement touches a
-- row); the applier takes it exclusively before it reads which rows have
-- local changes the hub has not sequenced. Without it a local write could
-- commit between that read and the apply, and be overwritten here while
-- winning everywhere else.
CREATE OR REPLACE FUNCTION _branchsync.lock_for_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF current_setting('branchsync.applying', true) IS DISTINCT FROM 'on' THEN
    PERFORM pg_advisory_xact_lock_shared(${APPLY_LOCK});
  END IF;
  RETURN NULL;
END $$;
-- The applier's one-round-trip path (agent/apply/oneTrip.ts) sends its rows
-- before it knows whether local changes supersede any of them, so it asks
-- here, under its exclusive lock: a local transaction not yet sequenced, or
-- sequenced after the incoming ones, sends it back to the careful path.
CREATE OR REPLACE FUNCTION _branchsync.require_no_local_after(low bigint) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM _branchsync.txns WHERE seq IS NULL OR seq > low) THEN
    RAISE EXCEPTION 'local changes may supersede incoming rows' USING ERRCODE = '${LOCAL_PENDING_SQLSTATE}';
  END IF;
END $$;
-- Every apply moves the cursor here, from where the session last left it
-- (NULL: not known, no check). A crash undoes applies committed without
-- waiting for their flush, cursor and all; a session that kept running past
-- it would move the cursor on from a position the database no longer holds,
-- and what was undone would never be sent again. Raising instead aborts the
-- apply, and the next session resumes from the cursor the database kept.
CREATE OR REPLACE FUNCTION _branchsync.move_cursor(p_from bigint, p_to bigint, p_hlc bigint) RETURNS void LANGUAGE plpgsql AS $$
DECLARE at bigint;
BEGIN
  UPDATE _branchsync.state SET cursor = p_to, hlc = greatest(hlc, p_hlc) WHERE p_from IS NULL OR cursor = p_from RETURNING cursor INTO at;
  IF at IS NULL THEN
    SELECT cursor INTO at FROM _branchsync.state;
    RAISE EXCEPTION 'the branch database holds cursor %, not % where this session left it (a restart undid applied batches?): starting again from %', at, p_from, at
      USING ERRCODE = '${CURSOR_MOVED_SQLSTATE}';
  END IF;
END $$;
-- The sender's read (agent/capture/reader.ts readBatch): the oldest unsent
-- transactions whose sizes add up to at most p_max (a prefix, by the running
-- sum), with their units; only the first, without units, when it alone is
-- too large. Its plan must be index probes whatever the queue's statistics
-- say: planned on a small queue, a branch back from days offline sorted its
-- whole backlog and scanned every unit for each batch (9 ms per read at
-- 10,000 transactions, growing with them; 1 ms this way). OFFSET 0 keeps
-- the units' lookup a probe per transaction: statistics taken on an emptied
-- queue (VACUUM keeps its pages, so the planner reads them as empty pages)
-- let it scan every unit once into a Materialize and filter all of them for
-- each transaction instead, 6 s per read at 20,000 pending.
DROP FUNCTION IF EXISTS _branchsync.read_batch(xid8[], int);
CREATE FUNCTION _branchsync.read_batch(p_in_flight xid8[], p_max int)
  RETURNS TABLE (txid text, n int, t bigint, base text, seen text, fits boolean, pending int,
                 tbl text, op "char", keys text, rows text, prevs text, cols text)
  LANGUAGE plpgsql STABLE SET enable_seqscan = off SET enable_bitmapscan = off SET enable_hashjoin = off
    SET enable_mergejoin = off SET jit = off AS $$
BEGIN
  RETURN QUERY
  WITH w AS (SELECT x.txid AS x, x.n, x.started_at, x.base, x.seen_hlc, x.last_id FROM _branchsync.txns x
              WHERE x.seq IS NULL AND NOT (x.txid = ANY(p_in_flight)) ORDER BY x.last_id LIMIT 256),
       p AS (SELECT w.*, sum(w.n) OVER (ORDER BY w.last_id) AS running, row_number() OVER (ORDER BY w.last_id) AS rn FROM w)
  SELECT p.x::text, p.n, (extract(epoch FROM p.started_at) * 1000000)::bigint, p.base::text, p.seen_hlc::text,
         p.running <= p_max, (SELECT count(*) FROM p)::int, c.tbl, c.op, c.keys, c.rows, c.prevs, c.cols
    FROM p LEFT JOIN LATERAL (
           SELECT c.id, c.tbl, c.op, c.keys, c.rows, c.prevs, c.cols FROM _branchsync.changes c WHERE c.txid = p.x AND p.running <= p_max
           OFFSET 0) c ON true
   WHERE p.running <= p_max OR p.rn = 1
   ORDER BY p.rn, c.id;
END $$;
CREATE OR REPLACE FUNCTION _branchsync.refuse_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF current_setting('branchsync.applying', true) = 'on' THEN RETURN NULL; END IF;
  RAISE EXCEPTION 'TRUNCATE of %.% is not synced by branchsync; use DELETE', TG_TABLE_SCHEMA, TG_TABLE_NAME;
END $$;
`;

function fnName(t: LocalTable, op: string): string {
  return quoteIdent(`cap_${op}_${createHash("md5").update(t.name).digest("hex").slice(0, 16)}`);
}

// Aliases no sane column is called, for the transition tables' rows.
const NEW = "bs_new_row_";
const OLD = "bs_old_row_";

const isJson = (type: string) => type === "json" || type === "jsonb";

/**
 * What a column contributes to its column array. json/jsonb columns travel
 * as strings holding their text: inside the row a JSON null and an SQL NULL
 * would both become null.
 */
function columnValues(t: LocalTable, ref: (name: string, i: number) => string): string[] {
  return t.columns.map((c, i) => (isJson(c.type) ? `${ref(c.name, i)}::text` : ref(c.name, i)));
}

/**
 * A unit's rows as one JSON array per column, in column order, as text:
 * `[[1, 2],["a", "b"]]`. The agent puts each row's image back together
 * (agent/capture/units.ts). json_agg of one column looks its type up once;
 * json_agg of whole rows (to_json of each) looked up every column's type
 * for every row, a third of what capture cost the writer. concat_ws takes
 * at most 100 arguments.
 */
function columnArrays(values: string[], array: (v: string) => string = (v) => `json_agg(${v})::text`): string {
  const aggs = values.map(array);
  const groups: string[] = [];
  for (let i = 0; i < aggs.length; i += 90) groups.push(`concat_ws(',', ${aggs.slice(i, i + 90).join(", ")})`);
  return `'[' || ${groups.length === 1 ? groups[0] : `concat_ws(',', ${groups.join(", ")})`} || ']'`;
}

/** The column names of a table's units (what `rows` holds the arrays of), as an SQL literal. */
const columnNames = (t: LocalTable) => `'${JSON.stringify(t.columns.map((c) => c.name)).replace(/'/g, "''")}'`;

/** A statement's rows: exactly one, at most UNIT_ROWS (one unit), or more. */
type UnitSize = "one" | "small" | "large";

/**
 * One part of a statement's capture: rows of one op from `from`, with the
 * key, the column names and, for updates, the old values, built from the
 * row alias.
 */
interface UnitSource { op: "I" | "U" | "D"; alias: string; table: LocalTable; prev?: string; from: string }

function part(t: LocalTable, op: UnitSource["op"], alias: string, from: string, prev?: string): UnitSource {
  return { op, alias, table: t, prev, from };
}

/**
 * The INSERT of a part's units: one unit when the statement changed at most
 * UNIT_ROWS rows (`small`), else units of UNIT_ROWS rows numbered by
 * row_number() over the unsorted input. Nothing is sorted: keys, rows and
 * old values of one row go into their aggregates in the same step, so the
 * arrays stay parallel whatever order the rows come in, and the order of
 * one statement's rows carries no meaning (each key appears once). Sorting
 * them (and building every JSON image before the sort) was a fifth of what
 * capture cost the writer.
 */
function unitsOf(name: string, s: UnitSource, size: UnitSize, txid: string): string {
  const t = s.table;
  const head = `SELECT ${txid}, '${name}', '${s.op}'::"char", count(*)::int`;
  const prevs = (p: string) => (s.prev ? `'[' || string_agg(coalesce(${p}, 'null'), ',') || ']'` : "NULL::text");
  const cols = columnNames(t);
  const ref = (c: string) => `${s.alias}.${quoteIdent(c)}`;
  if (size === "one") {
    // The same text without aggregates, whose set-up was most of what
    // capturing a single-row statement cost: json_agg of one value is `[`,
    // its to_json, `]`.
    const one = (v: string) => `'[' || coalesce(${v}, 'null') || ']'`;
    const json = (type: string, v: string) => (PRINTS_AS_JSON.test(type) ? `${v}::text` : `to_json(${v})::text`);
    const keys = columnArrays(t.primaryKey.map((k) => json(t.columns.find((c) => c.name === k)!.type, ref(k))), one);
    const rows = columnArrays(columnValues(t, ref).map((v, i) => json(t.columns[i].type, v)), one);
    return `SELECT ${txid}, '${name}', '${s.op}'::"char", 1, ${keys}, ${rows}, ${s.prev ? `'[' || coalesce(${s.prev}, 'null') || ']'` : "NULL::text"}, ${cols} FROM ${s.from}`;
  }
  // Key columns go in as they are (a jsonb key as its JSON, which is what
  // json_build_array prints); for other types their json_agg is the rows'
  // one, computed once.
  if (size === "small") {
    return `${head}, ${columnArrays(t.primaryKey.map(ref))}, ${columnArrays(columnValues(t, ref))}, ${prevs(s.prev ?? "")}, ${cols} FROM ${s.from} HAVING count(*) > 0`;
  }
  const keyIndex = t.primaryKey.map((k) => t.columns.findIndex((c) => c.name === k));
  const inner = t.columns.map((c, i) => `${s.alias}.${quoteIdent(c.name)} AS bs_c${i}_`).join(", ");
  return `${head}, ${columnArrays(keyIndex.map((i) => `bs_c${i}_`))}, ${columnArrays(columnValues(t, (_, i) => `bs_c${i}_`))}, ${prevs("bs_p_")}, ${cols}
      FROM (SELECT row_number() OVER () AS bs_n_, ${inner}${s.prev ? `, ${s.prev} AS bs_p_` : ""} FROM ${s.from}) bs_u_
     GROUP BY (bs_n_ - 1) / ${UNIT_ROWS}`;
}

/** The statement writing a statement's units (parts in order: a re-keying update's deletes first). */
function unitsInsert(name: string, parts: UnitSource[], size: UnitSize, txid = "x"): string {
  const selects = parts.map((p) => `(${unitsOf(name, p, size, txid)})`).join("\n      UNION ALL ");
  return `INSERT INTO _branchsync.changes(txid, tbl, op, n, keys, rows, prevs, cols) ${selects}`;
}

/** Types whose text output is exactly what to_json prints for them. */
const PRINTS_AS_JSON = /^(smallint|integer|bigint|boolean)$/;

// Types without an equality operator are compared as text.
const NO_EQUALITY = /^(json|xml|point|line|lseg|box|path|polygon|circle)(\[\])?$/;

/**
 * An updated row's changed columns with their old values, {"qty":[5]}, as
 * text: the hub merges concurrent edits of different columns and adds up
 * counters with it. Built by concatenating only the changed columns, which
 * costs the writer half of what a json object of every column did. NULL
 * when the key changed (every column is new then).
 */
function prevOf(t: LocalTable): string {
  const cols = t.columns.filter((c) => !t.primaryKey.includes(c.name));
  if (cols.length === 0) return "'{}'";
  const member = (c: LocalTable["columns"][number]) => {
    const n = `${NEW}.${quoteIdent(c.name)}`;
    const o = `${OLD}.${quoteIdent(c.name)}`;
    const differs = NO_EQUALITY.test(c.type) ? `${n}::text IS DISTINCT FROM ${o}::text` : `${n} IS DISTINCT FROM ${o}`;
    // Integers and booleans print as their JSON already; to_json would look
    // their type up again for every value.
    const value = PRINTS_AS_JSON.test(c.type) ? `${o}::text` : `to_json(${isJson(c.type) ? `${o}::text` : o})::text`;
    return `CASE WHEN ${differs} THEN '${JSON.stringify(c.name)}:[' || coalesce(${value}, 'null') || ']' END`;
  };
  // concat_ws skips NULLs (unchanged columns) and takes at most 100 arguments.
  const groups: string[] = [];
  for (let i = 0; i < cols.length; i += 90) groups.push(`concat_ws(',', ${cols.slice(i, i + 90).map(member).join(", ")})`);
  const body = groups.length === 1 ? groups[0] : `concat_ws(',', ${groups.map((g) => `nullif(${g}, '')`).join(", ")})`;
  return `CASE WHEN ${OLD}.${quoteIdent(t.primaryKey[0])} IS NULL THEN NULL ELSE '{' || ${body} || '}' END`;
}

/**
 * Settings that change how values print as JSON, fixed for capture: a key is
 * a row's identity on the hub and at every branch, compared as text, and a
 * till in Kolkata printing a timestamptz key as 05:30+05:30 while the one in
 * London prints 00:00+00:00 would make one row two (a local change missed,
 * a conflict not seen). Row images and old values print the same way.
 */
const RENDERING: [string, string][] = [
  ["TimeZone", "UTC"], ["IntervalStyle", "postgres"], ["extra_float_digits", "1"], ["bytea_output", "hex"], ["lc_monetary", "C"],
];
const RENDERING_SQL = RENDERING.map(([k, v]) => ` SET ${k} = '${v}'`).join("");

function captureFunction(t: LocalTable, op: "ins" | "upd" | "del"): string {
  const name = t.name.replace(/'/g, "");
  // A changed primary key is a delete of the old key plus the new row.
  const same = t.primaryKey.map((k) => `${NEW}.${quoteIdent(k)} = ${OLD}.${quoteIdent(k)}`).join(" AND ");
  const whole = (ps: UnitSource[]) => ({ one: ps, plain: ps, rekeyed: [] });
  const parts: Record<"one" | "plain" | "rekeyed", UnitSource[]> = op === "ins"
    ? whole([part(t, "I", NEW, `new_rows ${NEW}`)])
    : op === "del"
      ? whole([part(t, "D", OLD, `old_rows ${OLD}`)])
      : {
        // One row each side: no join to set up, and nothing when the key changed.
        one: [part(t, "U", NEW, `new_rows ${NEW}, old_rows ${OLD} WHERE (${same}) IS TRUE`, prevOf(t))],
        plain: [part(t, "U", NEW, `new_rows ${NEW} LEFT JOIN old_rows ${OLD} ON ${same}`, prevOf(t))],
        rekeyed: [
          part(t, "D", OLD, `old_rows ${OLD} WHERE NOT EXISTS (SELECT 1 FROM new_rows ${NEW} WHERE ${same})`),
          part(t, "U", NEW, `new_rows ${NEW} LEFT JOIN old_rows ${OLD} ON ${same}`, prevOf(t)),
        ],
      };
  // An update pairs old and new rows by key. plpgsql keeps the plan made for
  // the session's first statements: after single-row updates that was a
  // nested loop, and a 10,000-row update then took 18.5 s instead of 0.2 s.
  // Hash joins cost a single-row statement next to nothing. No JIT: a key
  // type without hashing leaves only the disabled plans, whose cost would
  // have every statement compiled (tens of ms), as it would no OLTP trigger.
  const planning = op === "upd" ? " SET enable_nestloop = off SET enable_mergejoin = off SET jit = off" : "";
  const write = (ps: UnitSource[], size: UnitSize) => `WITH ins AS (${unitsInsert(name, ps, size)} RETURNING id, n)
      SELECT max(id), sum(n) INTO m, c FROM ins;`;
  // An update's new rows without an old row of their key: a key changed,
  // which is rare, and only then does the statement also look for old keys
  // that are gone (that half cost 103k of the 597k instructions capturing a
  // single-row update took, bench/capture-instructions.sh 200 1).
  const rekeyed = `SELECT count(*) - count(${OLD}.${quoteIdent(t.primaryKey[0])}) INTO r FROM new_rows ${NEW} LEFT JOIN old_rows ${OLD} ON ${same};`;
  const writes = (size: UnitSize) => (op === "upd"
    ? `${rekeyed}\n    IF r = 0 THEN\n      ${write(parts.plain, size)}\n    ELSE\n      ${write(parts.rekeyed, size)}\n    END IF;`
    : write(parts.plain, size));
  // A single-row update whose key changed writes nothing the short way.
  const one = op === "upd" ? `${write(parts.one, "one")}\n    IF c IS NULL THEN ${write(parts.rekeyed, "small")} END IF;` : write(parts.one, "one");
  return `CREATE OR REPLACE FUNCTION _branchsync.${fnName(t, op)}() RETURNS trigger LANGUAGE plpgsql${RENDERING_SQL}${planning} AS $f$
DECLARE x xid8 := pg_current_xact_id(); m bigint; c int; k bigint; r bigint;
BEGIN
  IF current_setting('branchsync.applying', true) = 'on' THEN RETURN NULL; END IF;
  SELECT count(*) INTO k FROM ${op === "del" ? "old_rows" : "new_rows"};
  -- An update has as many old rows as new ones: each part of a small one fits a unit.
  IF k = 0 THEN
    RETURN NULL;
  ELSIF k = 1 THEN
    ${one}
  ELSIF k <= ${UNIT_ROWS} THEN
    ${writes("small")}
  ELSE
    ${writes("large")}
  END IF;
  IF c > 0 THEN
    -- The transaction's row in txns (NOTE_TXN_SQL, inline).
    ${NOTE_TXN_SQL}
  END IF;
  RETURN NULL;
END $f$`;
}

const TRIGGERS_PER_TABLE = 5;

function triggers(t: LocalTable): string[] {
  const q = `${quoteIdent(t.schema)}.${quoteIdent(t.table)}`;
  return [
    captureFunction(t, "ins"), captureFunction(t, "upd"), captureFunction(t, "del"),
    `DROP TRIGGER IF EXISTS _branchsync_ins ON ${q}`,
    `DROP TRIGGER IF EXISTS _branchsync_upd ON ${q}`,
    `DROP TRIGGER IF EXISTS _branchsync_del ON ${q}`,
    `DROP TRIGGER IF EXISTS _branchsync_trunc ON ${q}`,
    `DROP TRIGGER IF EXISTS _branchsync_lock ON ${q}`,
    `CREATE TRIGGER _branchsync_lock BEFORE INSERT OR UPDATE OR DELETE ON ${q} FOR EACH STATEMENT EXECUTE FUNCTION _branchsync.lock_for_write()`,
    `CREATE TRIGGER _branchsync_ins AFTER INSERT ON ${q} REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION _branchsync.${fnName(t, "ins")}()`,
    `CREATE TRIGGER _branchsync_upd AFTER UPDATE ON ${q} REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION _branchsync.${fnName(t, "upd")}()`,
    `CREATE TRIGGER _branchsync_del AFTER DELETE ON ${q} REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION _branchsync.${fnName(t, "del")}()`,
    `CREATE TRIGGER _branchsync_trunc BEFORE TRUNCATE ON ${q} FOR EACH STATEMENT EXECUTE FUNCTION _branchsync.refuse_truncate()`,
  ];
}

export class BindingError extends Error {}

/**
 * Installs (idempotently) and binds the database to one tenant and branch.
 * A database already bound to another branch is refused: its cursor and
 * change log belong to that branch.
 */
/**
 * Queues every existing row of the tracked tables as inserts, in this one
 * local transaction: the branch's data as of now reaches the other branches
 * through the normal path (chunked if large), after which the triggers carry
 * every later change. Runs only when the database is first bound.
 */
async function queueExistingRows(db: pg.ClientBase, tables: LocalTable[]): Promise<number> {
  let total = 0;
  for (const [k, v] of RENDERING) await db.query(`SET LOCAL ${k} = '${v}'`);
  for (const t of tables) {
    const q = `${quoteIdent(t.schema)}.${quoteIdent(t.table)}`;
    const units = unitsInsert(t.name.replace(/'/g, ""), [part(t, "I", NEW, `${q} ${NEW}`)], "large", "pg_current_xact_id()");
    const r = await db.query(`WITH ins AS (${units} RETURNING n) SELECT coalesce(sum(n), 0)::int AS n FROM ins`);
    total += r.rows[0].n;
  }
  if (total > 0) {
    await db.query(`SELECT _branchsync.note_txn(pg_current_xact_id(), (SELECT max(id) FROM _branchsync.changes), $1)`, [total]);
  }
  return total;
}

/** The recorded DDL hash, or null if capture is missing anywhere (so it is reinstalled). */
async function installedHash(db: pg.ClientBase, tables: LocalTable[]): Promise<string | null> {
  const exists = await db.query("SELECT to_regclass('_branchsync.state') IS NOT NULL AS ok");
  if (!exists.rows[0].ok) return null;
  const { rows } = await db.query(
    `SELECT (SELECT capture_hash FROM _branchsync.state) AS hash,
            (SELECT count(*)::int FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE t.tgname LIKE '\\_branchsync\\_%' AND (n.nspname || '.' || c.relname) = ANY($1)) AS triggers
`, [tables.map((t) => t.name)]);
  if (rows.length === 0 || rows[0].triggers !== tables.length * TRIGGERS_PER_TABLE) return null;
  return rows[0].hash;
}

export async function installCapture(db: pg.ClientBase, tables: LocalTable[], tenantId: string, branchId: string, initialUpload = false): Promise<bigint> {
  await db.query("BEGIN");
  try {
    await db.query("SELECT pg_advisory_xact_lock(hashtext('_branchsync install'))");
    const ddl = [BASE_DDL, ...tables.flatMap(triggers)];
    const hash = createHash("sha256").update(ddl.join("\n;\n")).digest("hex");
    const current = await installedHash(db, tables);
    if (current !== hash) {
      for (const stmt of ddl) await db.query(stmt);
      await db.query("UPDATE _branchsync.state SET capture_hash = $1", [hash]);
    }
    const bound = await db.query(
      "INSERT INTO _branchsync.state(tenant_id, branch_id, capture_hash) VALUES ($1, $2, $3) ON CONFLICT (one) DO NOTHING", [tenantId, branchId, hash]);
    if (bound.rowCount === 1 && initialUpload) await queueExistingRows(db, tables);
    const { rows } = await db.query("SELECT cursor, tenant_id, branch_id FROM _branchsync.state");
    if (rows[0].tenant_id !== tenantId || rows[0].branch_id !== branchId) {
      throw new BindingError(`this database is bound to tenant "${rows[0].tenant_id}" branch "${rows[0].branch_id}", not "${tenantId}"/"${branchId}"; use that branch's API key or a fresh database`);
    }
    await db.query("COMMIT");
    return BigInt(rows[0].cursor);
  } catch (e) {
    await db.query("ROLLBACK");
    throw e;
  }
}
