/**
 * Tenants and branches. Each tenant's data lives in its own PostgreSQL schema
 * ("tenant_<id>"): its change log, sequence head, cursors and table registry.
 * We chose schema-per-tenant over row-level security because the schema name
 * is derived from the verified token in exactly one function (tenantSchema),
 * a tenant's hot rows (the head row lock, the log's indexes) never contend
 * with another tenant's, and exporting or deleting a tenant is one schema.
 */
import type pg from "pg";
import { quoteIdent, TENANT_ID, BRANCH_ID } from "../../lib/ident.ts";
import { StatusError, Status } from "../errors.ts";

export function tenantSchema(tenantId: string): string {
  if (!TENANT_ID.test(tenantId)) throw new StatusError(Status.INVALID_ARGUMENT, `invalid tenant id "${tenantId}"`);
  return quoteIdent(`tenant_${tenantId}`);
}

function tenantDdl(s: string): string[] {
  return [
    `CREATE SCHEMA ${s}`,
    // One row; its row lock serialises sequence assignment, which makes the
    // tenant sequence gap-free and visible in order (see store/log.ts).
    `CREATE TABLE ${s}.head (one boolean PRIMARY KEY DEFAULT true CHECK (one), seq bigint NOT NULL)`,
    `INSERT INTO ${s}.head VALUES (true, 0)`,
    `CREATE TABLE ${s}.log (
       seq bigint NOT NULL,
       part int NOT NULL,
       origin_branch text NOT NULL,
       origin_txn bigint NOT NULL,
       last_part boolean NOT NULL,
       n_changes int NOT NULL,
       body bytea NOT NULL,
       committed_at timestamptz NOT NULL DEFAULT now(),
       PRIMARY KEY (seq, part))`,
    `CREATE UNIQUE INDEX ON ${s}.log (origin_branch, origin_txn, part)`,
    `CREATE TABLE ${s}.pending_chunks (
       origin_branch text NOT NULL,
       origin_txn bigint NOT NULL,
       part int NOT NULL,
       n_changes int NOT NULL,
       body bytea NOT NULL,
       received_at timestamptz NOT NULL DEFAULT now(),
       PRIMARY KEY (origin_branch, origin_txn, part))`,
    `CREATE TABLE ${s}.cursors (
       branch_id text PRIMARY KEY,
       acked_seq bigint NOT NULL,
       updated_at timestamptz NOT NULL DEFAULT now())`,
    `CREATE TABLE ${s}.tables (
       name text PRIMARY KEY,
       definition jsonb NOT NULL,
       registered_by text NOT NULL,
       registered_at timestamptz NOT NULL DEFAULT now())`,
  ];
}

/**
 * Later steps of every tenant schema, in order; a tenant's `schema_version`
 * says how many it has. Existing tenants are upgraded by migrate() at
 * start-up, new ones get all steps at creation. Append only.
 */
export function tenantMigrations(s: string): string[][] {
  return [[
    // Conflicts: the newest version of every row the tenant has synced
    // (a tombstone for a deleted one): which sequence number and branch it
    // came from, its HLC, and for column-merge tables each column's version.
    `CREATE TABLE ${s}.row_state (
       tbl text NOT NULL,
       key text NOT NULL,
       op "char" NOT NULL,
       seq bigint NOT NULL,
       branch text NOT NULL,
       exact boolean NOT NULL,
       hlc bigint NOT NULL,
       cols jsonb,
       PRIMARY KEY (tbl, key))`,
    `ALTER TABLE ${s}.log ADD COLUMN conflicts int NOT NULL DEFAULT 0`,
    `ALTER TABLE ${s}.tables ADD COLUMN strategy text NOT NULL DEFAULT 'last-writer-wins',
       ADD COLUMN branch_priority text[] NOT NULL DEFAULT '{}', ADD COLUMN delta_columns text[] NOT NULL DEFAULT '{}'`,
    `CREATE TABLE ${s}.conflicts (
       id bigserial PRIMARY KEY,
       seq bigint NOT NULL,
       tbl text NOT NULL,
       key text NOT NULL,
       kind text NOT NULL,
       strategy text NOT NULL,
       existing_branch text NOT NULL,
       incoming_branch text NOT NULL,
       existing_row text,
       incoming_row text,
       result_row text,
       winner_branch text NOT NULL,
       loser_branch text NOT NULL,
       reason text NOT NULL,
       status text NOT NULL,
       created_at timestamptz NOT NULL DEFAULT now(),
       resolved_at timestamptz,
       resolution_seq bigint)`,
    `CREATE INDEX ON ${s}.conflicts (seq)`,
    `CREATE INDEX ON ${s}.conflicts (status) WHERE status = 'open'`,
    `CREATE TABLE ${s}.quarantine (
       branch_id text NOT NULL,
       seq bigint NOT NULL,
       origin_branch text NOT NULL,
       error text NOT NULL,
       sqlstate text NOT NULL,
       status text NOT NULL,
       created_at timestamptz NOT NULL DEFAULT now(),
       updated_at timestamptz NOT NULL DEFAULT now(),
       PRIMARY KEY (branch_id, seq))`,
    `CREATE INDEX ON ${s}.quarantine (branch_id) WHERE status IN ('retry', 'discard')`,
  ], [
    // The common append in one round trip (store/log.ts appendPlain). A
    // function, because its checks must read what committed before it got
    // the head lock: a plain statement's snapshot is older than its lock
    // wait, and would miss the row versions the previous append wrote.
    // The bodies come as one bytea with their lengths: a bytea[] parameter
    // travels as hex text, a bytea as binary.
    appendPlainFn(s, "CREATE", false),
  ], [
    // The dedup lookup (origin_branch, origin_txn = ANY(...), part) is made
    // on every append. With origin_branch leading, a log without statistics
    // yet (the first minute of a tenant, before autoanalyze) was planned as
    // a scan of all the branch's entries with origin_txn as a filter: 2-4 ms
    // per append, growing with the log. With origin_txn leading, any plan
    // that uses the index probes exactly the txids asked for.
    `DROP INDEX ${s}.log_origin_branch_origin_txn_part_idx`,
    `CREATE UNIQUE INDEX log_origin_txn_idx ON ${s}.log (origin_txn, origin_branch, part)`,
  ], [
    // The head remembers the current run of plain appends by one branch
    // (run_branch, from run_start on). A transaction of that branch based at
    // or after the run's start can meet no version but its own exact
    // writes, so append_plain skips the row-version check for it: for a
    // branch writing alone that was two fifths of the append. The general
    // path ends the run (it writes merged and resolved rows).
    `ALTER TABLE ${s}.head ADD COLUMN run_branch text NOT NULL DEFAULT '', ADD COLUMN run_start bigint NOT NULL DEFAULT 0`,
    appendPlainFn(s, "CREATE OR REPLACE", true),
  ], [
    // row_state is upserted for every change; an update of a row's version
    // changes no key, so with room left on its page it is a HOT update and
    // writes no index entry. Applies to pages written from now on.
    `ALTER TABLE ${s}.row_state SET (fillfactor = 85)`,
  ], [
    // Branches that lost a conflict to a row's version (conflict/resolve.ts
    // RowVersion.lost): their changes based before the decision are
    // concurrent, so append_plain checks them too and clears the map.
    `ALTER TABLE ${s}.row_state ADD COLUMN lost jsonb`,
    appendPlainFn(s, "CREATE OR REPLACE", true, true),
  ], [
    // Log bodies are 10-20 kB of protobuf each, so every one was compressed
    // with the default pglz: a quarter of an append's time. lz4 does the
    // same in a third of it, and reads back faster. New values only; a
    // server built without lz4 keeps pglz.
    `DO $$ BEGIN
       ALTER TABLE ${s}.log ALTER COLUMN body SET COMPRESSION lz4;
       ALTER TABLE ${s}.pending_chunks ALTER COLUMN body SET COMPRESSION lz4;
     EXCEPTION WHEN feature_not_supported THEN NULL;
     END $$`,
    // row_state's key is compared, never sorted for people: byte order
    // spares every index probe a locale comparison (8% of the upsert). Same
    // type, so no rewrite; the key index is rebuilt (about 1.2 s per million
    // rows, under lock, at hub start) and the columns' statistics, which the
    // ALTER drops, are taken again at once.
    `ALTER TABLE ${s}.row_state ALTER COLUMN tbl TYPE text COLLATE "C", ALTER COLUMN key TYPE text COLLATE "C"`,
    `ANALYZE ${s}.row_state`,
  ], [
    // A plpgsql function keeps the plans it made in each hub connection.
    // Made while row_state was small (a new tenant, autovacuum off or
    // behind), the row-version check scanned all of row_state for every
    // append: 130 ms per append at a million rows instead of 0.1 ms. Every
    // statement in append_plain is meant as index probes, so it may plan
    // nothing else. No JIT: the cost a disabled plan carries (the one-row
    // head has no index to use) would have every call compile its
    // statements, 50 ms each time.
    appendPlainFn(s, "CREATE OR REPLACE", true, true, true),
  ], [
    // The same for the general path's version lookup (store/rowState.ts): as
    // a prepared statement, a plan made on a small row_state scanned all of
    // it for every lookup, 135 ms at a million rows. A function's settings
    // hold however the connection planned it before.
    `CREATE FUNCTION ${s}.row_versions(p_tbl text[], p_key text[]) RETURNS SETOF ${s}.row_state LANGUAGE sql STABLE
       SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off SET jit = off
       AS $f$ SELECT s.* FROM ${s}.row_state s JOIN unnest(p_tbl, p_key) AS u(t, k) ON s.tbl = u.t AND s.key = u.k $f$`,
  ], [
    // Rows inserted at their origin go into row_state by plain INSERT
    // (rowStateFresh): the hub's database spent most of an append on
    // upserting row_state, and for new rows most of that on speculation.
    appendPlainFn(s, "CREATE OR REPLACE", true, true, true, true),
  ], [
    // One append updates the versions of rows that were written together,
    // so they share pages: a batch of updates to a sale's lines, or to rows
    // inserted in one run. A new version goes on its old one's page (HOT,
    // no index entry) only if the page has room for it, and the versions
    // this transaction replaces cannot be pruned before it commits: at 85%
    // six in seven of those updates wrote a new key into the index and
    // moved the row to another page, and took twice as long. At 50% every
    // row of a page can be updated in one append. New pages only; existing
    // ones get the room as they are rewritten (VACUUM FULL).
    `ALTER TABLE ${s}.row_state SET (fillfactor = 50)`,
  ]];
}

/** Each key's newest change in the append, as its row_state row; `where` filters on its op. */
function rowStateRows(where = ""): string {
  return `SELECT * FROM (SELECT DISTINCT ON (ch.tbl, ch.key) ch.tbl, ch.key, ch.op, h + ch.txo AS seq, p_branch AS branch, true AS exact,
              p_hlc[ch.txo] AS hlc, NULL::jsonb AS cols
         FROM unnest(c_tbl, c_key, c_op, c_txo) WITH ORDINALITY AS ch(tbl, key, op, txo, cord)
        ORDER BY ch.tbl, ch.key, ch.cord DESC) AS newest ${where}`;
}

function rowStateUpsert(s: string, lost: boolean, where = ""): string {
  return `INSERT INTO ${s}.row_state(tbl, key, op, seq, branch, exact, hlc, cols) ${rowStateRows(where)}
       ON CONFLICT (tbl, key) DO UPDATE SET op = excluded.op, seq = excluded.seq, branch = excluded.branch,
         exact = true, hlc = excluded.hlc, cols = NULL${lost ? ", lost = NULL" : ""}`;
}

/**
 * A row whose newest change here is its insert at the origin is new to
 * row_state, but for a delete's tombstone or two branches inserting one
 * key. A plain INSERT of those skips the speculative insertion ON CONFLICT
 * pays for every row, 40% of the write; should one exist after all, the
 * block's subtransaction undoes the INSERT and they take the upsert.
 */
function rowStateFresh(s: string, lost: boolean): string {
  return `IF 'I' = ANY(c_op) THEN
         BEGIN
           INSERT INTO ${s}.row_state(tbl, key, op, seq, branch, exact, hlc, cols) ${rowStateRows("WHERE newest.op = 'I'")};
         EXCEPTION WHEN unique_violation THEN
           ${rowStateUpsert(s, lost, "WHERE newest.op = 'I'")};
         END;
       END IF;
       IF NOT 'I' = ALL(c_op) THEN
         ${rowStateUpsert(s, lost, "WHERE newest.op <> 'I'")};
       END IF;`;
}

/**
 * The tenant's append_plain function (see store/log.ts appendPlain).
 * `runs`: skip the row-version check within the branch's run (migration 4).
 */
function appendPlainFn(s: string, verb: string, runs: boolean, lost = false, probesOnly = false, freshInserts = false): string {
  const concurrent = lost
    ? `((r.seq > p_base[ch.txo] AND NOT (r.exact AND r.branch = p_branch)) OR coalesce((r.lost ->> p_branch)::bigint, 0) > p_base[ch.txo])`
    : `r.seq > p_base[ch.txo] AND NOT (r.exact AND r.branch = p_branch)`;
  const check = `EXISTS (SELECT 1 FROM unnest(c_tbl, c_key, c_op, c_txo) AS ch(tbl, key, op, txo)
                    JOIN ${s}.row_state r ON r.tbl = ch.tbl AND r.key = ch.key
                   WHERE ${concurrent} AND NOT (r.op = 'D' AND ch.op = 'D'))`;
  return `${verb} FUNCTION ${s}.append_plain(p_branch text, p_txn bigint[], p_n int[], p_blob bytea, p_len int[], p_base bigint[], p_hlc bigint[],
        c_tbl text[], c_key text[], c_op "char"[], c_txo int[]) RETURNS bigint LANGUAGE plpgsql${probesOnly ? " SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off SET jit = off" : ""} AS $f$
     DECLARE h bigint; rb text; rs bigint;
     BEGIN
       ${runs ? `SELECT seq, run_branch, run_start INTO h, rb, rs FROM ${s}.head FOR UPDATE;` : `SELECT seq INTO h FROM ${s}.head FOR UPDATE;`}
       IF EXISTS (SELECT 1 FROM ${s}.log WHERE origin_branch = p_branch AND origin_txn = ANY(p_txn) AND part = 0) THEN RETURN NULL; END IF;
       IF ${runs ? `NOT (rb = p_branch AND (SELECT min(b) FROM unnest(p_base) AS b) >= rs - 1) THEN
         IF ${check} THEN RETURN NULL; END IF;
       END IF;` : `${check} THEN RETURN NULL; END IF;`}
       INSERT INTO ${s}.log(seq, part, origin_branch, origin_txn, last_part, n_changes, conflicts, body)
       SELECT h + u.ord, 0, p_branch, u.t, true, u.n, 0, substring(p_blob FROM (sum(u.len) OVER (ORDER BY u.ord) - u.len + 1)::int FOR u.len)
         FROM unnest(p_txn, p_n, p_len) WITH ORDINALITY AS u(t, n, len, ord);
       ${freshInserts ? rowStateFresh(s, lost) : `${rowStateUpsert(s, lost)};`}
       UPDATE ${s}.head SET seq = h + array_length(p_txn, 1)${runs ? `,
         run_branch = p_branch, run_start = CASE WHEN rb = p_branch THEN rs ELSE h + 1 END` : ""};
       RETURN h;
     END $f$`;
}

/** Brings one tenant's schema to the newest version (caller holds the migration lock). */
export async function upgradeTenant(c: pg.ClientBase, id: string, from: number): Promise<void> {
  const steps = tenantMigrations(tenantSchema(id));
  for (let v = from; v < steps.length; v++) {
    for (const stmt of steps[v]) await c.query(stmt);
    await c.query("UPDATE branchsync.tenants SET schema_version = $2 WHERE id = $1", [id, v + 1]);
  }
}

export interface TenantRow { id: string; name: string; createdAt: Date; headSeq: bigint }
export interface BranchRow { tenantId: string; id: string; name: string; createdAt: Date; ackedSeq: bigint; lastSeenAt: Date | null }

export async function createTenant(pool: pg.Pool, id: string, name: string): Promise<TenantRow> {
  if (!TENANT_ID.test(id)) {
    throw new StatusError(Status.INVALID_ARGUMENT, `tenant id "${id}" must match ${TENANT_ID}`);
  }
  const s = tenantSchema(id);
  const c = await pool.connect();
  try {
    await c.query("BEGIN");
    const r = await c.query(
      "INSERT INTO branchsync.tenants(id, name) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING created_at",
      [id, name || id]);
    if (r.rowCount === 0) throw new StatusError(Status.ALREADY_EXISTS, `tenant "${id}" already exists`);
    for (const stmt of tenantDdl(s)) await c.query(stmt);
    await upgradeTenant(c, id, 0);
    await c.query("COMMIT");
    return { id, name: name || id, createdAt: r.rows[0].created_at, headSeq: 0n };
  } catch (e) {
    await c.query("ROLLBACK");
    throw e;
  } finally {
    c.release();
  }
}

export async function listTenants(pool: pg.Pool): Promise<TenantRow[]> {
  const { rows } = await pool.query("SELECT id, name, created_at FROM branchsync.tenants ORDER BY id");
  const out: TenantRow[] = [];
  for (const r of rows) {
    const h = await pool.query(`SELECT seq FROM ${tenantSchema(r.id)}.head`);
    out.push({ id: r.id, name: r.name, createdAt: r.created_at, headSeq: BigInt(h.rows[0].seq) });
  }
  return out;
}

export async function tenantExists(pool: pg.Pool, id: string): Promise<boolean> {
  const { rowCount } = await pool.query("SELECT 1 FROM branchsync.tenants WHERE id = $1", [id]);
  return rowCount === 1;
}

export async function createBranch(pool: pg.Pool, tenantId: string, id: string, name: string): Promise<BranchRow> {
  if (!BRANCH_ID.test(id)) {
    throw new StatusError(Status.INVALID_ARGUMENT, `branch id "${id}" must match ${BRANCH_ID}`);
  }
  if (!(await tenantExists(pool, tenantId))) throw new StatusError(Status.NOT_FOUND, `tenant "${tenantId}" does not exist`);
  const r = await pool.query(
    "INSERT INTO branchsync.branches(tenant_id, id, name) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING RETURNING created_at",
    [tenantId, id, name || id]);
  if (r.rowCount === 0) throw new StatusError(Status.ALREADY_EXISTS, `branch "${id}" already exists in tenant "${tenantId}"`);
  return { tenantId, id, name: name || id, createdAt: r.rows[0].created_at, ackedSeq: 0n, lastSeenAt: null };
}

export async function listBranches(pool: pg.Pool, tenantId: string): Promise<BranchRow[]> {
  if (!(await tenantExists(pool, tenantId))) throw new StatusError(Status.NOT_FOUND, `tenant "${tenantId}" does not exist`);
  const { rows } = await pool.query(
    `SELECT b.id, b.name, b.created_at, c.acked_seq, c.updated_at
       FROM branchsync.branches b LEFT JOIN ${tenantSchema(tenantId)}.cursors c ON c.branch_id = b.id
      WHERE b.tenant_id = $1 ORDER BY b.id`, [tenantId]);
  return rows.map((r) => ({
    tenantId, id: r.id, name: r.name, createdAt: r.created_at,
    ackedSeq: BigInt(r.acked_seq ?? 0), lastSeenAt: r.updated_at ?? null,
  }));
}

export async function branchExists(pool: pg.Pool, tenantId: string, branchId: string): Promise<boolean> {
  const { rowCount } = await pool.query(
    "SELECT 1 FROM branchsync.branches WHERE tenant_id = $1 AND id = $2", [tenantId, branchId]);
  return rowCount === 1;
}
