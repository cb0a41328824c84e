/**
 * Control-schema migrations, run at start by every replica. An advisory lock
 * makes concurrent replicas take turns; each step runs once, in order.
 */
import type pg from "pg";
import { tenantMigrations, upgradeTenant } from "./tenants.ts";

const MIGRATIONS: string[] = [
  `CREATE TABLE branchsync.tenants (
     id text PRIMARY KEY,
     name text NOT NULL,
     created_at timestamptz NOT NULL DEFAULT now())`,
  `CREATE TABLE branchsync.branches (
     tenant_id text NOT NULL REFERENCES branchsync.tenants(id),
     id text NOT NULL,
     name text NOT NULL,
     created_at timestamptz NOT NULL DEFAULT now(),
     PRIMARY KEY (tenant_id, id))`,
  `CREATE TABLE branchsync.api_keys (
     key_id text PRIMARY KEY,
     tenant_id text NOT NULL,
     branch_id text NOT NULL,
     secret_sha256 bytea NOT NULL,
     created_at timestamptz NOT NULL DEFAULT now(),
     revoked_at timestamptz,
     FOREIGN KEY (tenant_id, branch_id) REFERENCES branchsync.branches(tenant_id, id))`,
  `CREATE TABLE branchsync.signing_keys (
     kid text PRIMARY KEY,
     private_jwk jsonb NOT NULL,
     public_jwk jsonb NOT NULL,
     created_at timestamptz NOT NULL DEFAULT now())`,
  // How many of tenantMigrations() a tenant's schema has (tenants.ts).
  `ALTER TABLE branchsync.tenants ADD COLUMN schema_version int NOT NULL DEFAULT 0`,
];

const LOCK_KEY = 0x6272_5359; // "brSY"

export async function migrate(pool: pg.Pool): Promise<number> {
  const c = await pool.connect();
  try {
    await c.query("SELECT pg_advisory_lock($1)", [LOCK_KEY]);
    await c.query("CREATE SCHEMA IF NOT EXISTS branchsync");
    await c.query(`CREATE TABLE IF NOT EXISTS branchsync.schema_migrations (
      version int PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())`);
    const { rows } = await c.query("SELECT coalesce(max(version), 0) AS v FROM branchsync.schema_migrations");
    const current = Number(rows[0].v);
    for (let v = current + 1; v <= MIGRATIONS.length; v++) {
      await c.query("BEGIN");
      try {
        await c.query(MIGRATIONS[v - 1]);
        await c.query("INSERT INTO branchsync.schema_migrations(version) VALUES ($1)", [v]);
        await c.query("COMMIT");
      } catch (e) {
        await c.query("ROLLBACK");
        throw e;
      }
    }
    // Tenant schemas follow, each step in its own transaction.
    const old = await c.query("SELECT id FROM branchsync.tenants WHERE schema_version < $1", [LATEST_TENANT]);
    for (const t of old.rows) await upgradeLocked(c, t.id);
    return MIGRATIONS.length;
  } finally {
    await c.query("SELECT pg_advisory_unlock($1)", [LOCK_KEY]).catch(() => undefined);
    c.release();
  }
}

const LATEST_TENANT = tenantMigrations("x").length;

/** Caller holds LOCK_KEY; re-reads the version under it. */
async function upgradeLocked(c: pg.PoolClient, id: string): Promise<void> {
  await c.query("BEGIN");
  try {
    const { rows } = await c.query("SELECT schema_version FROM branchsync.tenants WHERE id = $1 FOR UPDATE", [id]);
    if (rows.length === 1 && rows[0].schema_version < LATEST_TENANT) await upgradeTenant(c, id, rows[0].schema_version);
    await c.query("COMMIT");
  } catch (e) {
    await c.query("ROLLBACK");
    throw e;
  }
}

const current = new Set<string>();

/**
 * Brings one tenant's schema up to this hub's version before it is served.
 * migrate() does every tenant at start, but during a rolling upgrade a
 * replica still on the old version can create a tenant afterwards, with
 * fewer steps than this code expects. Checked once per tenant and process.
 */
export async function ensureTenantCurrent(pool: pg.Pool, id: string): Promise<void> {
  if (current.has(id)) return;
  const { rows } = await pool.query("SELECT schema_version FROM branchsync.tenants WHERE id = $1", [id]);
  if (rows.length === 1 && rows[0].schema_version < LATEST_TENANT) {
    const c = await pool.connect();
    try {
      await c.query("SELECT pg_advisory_lock($1)", [LOCK_KEY]);
      await upgradeLocked(c, id);
    } finally {
      await c.query("SELECT pg_advisory_unlock($1)", [LOCK_KEY]).catch(() => undefined);
      c.release();
    }
  }
  if (rows.length === 1) current.add(id);
}
