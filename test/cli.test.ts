import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import path from "node:path";
import { ITEMS_DDL, startCluster, type Cluster } from "./support/cluster.ts";
import { createDb, PG_BASE, waitFor, withDb } from "./support/db.ts";
import { freePort } from "./support/ports.ts";

const BIN = path.resolve(import.meta.dirname, "../bin/branchsync.mjs");

function cleanEnv() {
  return Object.fromEntries(Object.entries(process.env).filter(([k]) =>
    !/^(HUB_URL|HUB_AUTH_URL|TENANT_ID|BRANCH_ID|API_KEY|LOCAL_DATABASE_URL|TRACKED_TABLES|DATABASE_URL|ADMIN_TOKEN|GRPC_PORT|HTTP_PORT)$/.test(k)));
}

/** Async, so a hub inside this process keeps serving while the CLI runs. */
function runAsync(args: string[], env: Record<string, string> = {}): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [BIN, ...args], { env: { ...cleanEnv(), ...env } });
    let out = "";
    let err = "";
    p.stdout.on("data", (d) => { out += d; });
    p.stderr.on("data", (d) => { err += d; });
    p.on("close", (code) => resolve({ code, out, err }));
  });
}

function run(args: string[], env: Record<string, string> = {}) {
  const clean = cleanEnv();
  const r = spawnSync(process.execPath, [BIN, ...args], { env: { ...clean, ...env }, encoding: "utf8", timeout: 30_000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

describe("the branchsync CLI", function () {
  this.timeout(60_000);

  it("prints help for every command", () => {
    for (const cmd of [["--help"], ["hub", "--help"], ["agent", "--help"], ["migrate", "--help"], ["admin", "--help"]]) {
      const r = run(cmd);
      assert.equal(r.code, 0, `${cmd.join(" ")}: ${r.err}`);
      assert.match(r.out, /branchsync/);
    }
  });

  it("rejects bad config with one line naming the problem and exit code 2", () => {
    const cases: [string[], Record<string, string>, RegExp][] = [
      [["agent"], {}, /HUB_URL .*required/],
      [["agent"], { HUB_URL: "ftp://x", TENANT_ID: "t", BRANCH_ID: "b", API_KEY: "k", LOCAL_DATABASE_URL: "postgresql://x/y", TRACKED_TABLES: "items" }, /HUB_URL must use http: or https:/],
      [["agent"], { HUB_URL: "http://x:1", TENANT_ID: "Bad Tenant", BRANCH_ID: "b", API_KEY: "k", LOCAL_DATABASE_URL: "postgresql://x/y", TRACKED_TABLES: "items" }, /TENANT_ID/],
      [["agent"], { HUB_URL: "http://x:1", TENANT_ID: "t", BRANCH_ID: "b", API_KEY: "k", LOCAL_DATABASE_URL: "postgresql://x/y", TRACKED_TABLES: "items;drop table x" }, /TRACKED_TABLES/],
      [["agent"], { HUB_URL: "http://x:1", TENANT_ID: "t", BRANCH_ID: "b", API_KEY: "k", LOCAL_DATABASE_URL: "postgresql://x/y", TRACKED_TABLES: "items", APPLY_SYNCHRONOUS_COMMIT: "maybe" }, /APPLY_SYNCHRONOUS_COMMIT "maybe"/],
      [["hub"], { GRPC_PORT: "70000" }, /GRPC_PORT must be between 0 and 65535/],
      [["hub", "--grpc-port", "abc"], {}, /--grpc-port must be an integer/],
      [["hub", "--no-such-flag", "1"], {}, /unknown flag --no-such-flag/],
      [["hub", "--heap-growing-percent", "5000"], {}, /--heap-growing-percent must be between 0 and 1000/],
      [["frobnicate"], {}, /unknown command/],
      [["migrate"], { DATABASE_URL: "postgresql://u@[::1/x" }, /DATABASE_URL is not a URL/],
    ];
    for (const [args, env, re] of cases) {
      const r = run(args, env);
      assert.equal(r.code, 2, `${args.join(" ")} ${JSON.stringify(env)}: exit ${r.code}, stderr ${r.err}`);
      assert.match(r.err, re);
      assert.equal(r.err.trim().split("\n").length, 1, `one line expected, got: ${r.err}`);
    }
  });

  it("names the database it cannot reach at start-up, and which setting points there, without its password (exit code 1)", async () => {
    const port = await freePort(5960);
    for (const [args, env, what] of [
      [["agent"], { HUB_URL: "http://127.0.0.1:1", HUB_AUTH_URL: "http://127.0.0.1:2", TENANT_ID: "t", BRANCH_ID: "b", API_KEY: "k", TRACKED_TABLES: "items",
        LOCAL_DATABASE_URL: `postgresql://app:s3cret@127.0.0.1:${port}/shop` }, `the branch database at 127.0.0.1:${port}/shop (LOCAL_DATABASE_URL)`],
      [["hub"], { DATABASE_URL: `postgresql://postgres:s3cret@127.0.0.1:${port}/hubdb`, ADMIN_TOKEN: "x", GRPC_PORT: "0", HTTP_PORT: "0" }, `the hub database at 127.0.0.1:${port}/hubdb (DATABASE_URL)`],
    ] as const) {
      const r = await runAsync([...args], { ...env });
      assert.equal(r.code, 1, r.err);
      assert.equal(r.err.trim().split("\n").length, 1, `one line expected, got: ${r.err}`);
      assert.ok(r.err.includes(`cannot reach ${what}: connect ECONNREFUSED`), r.err);
      assert.ok(!r.err.includes("s3cret"), "no password in the message");
    }
  });

  it("takes a libpq URL with a user and no host (a Unix socket given as ?host=): migrate runs through it", async () => {
    const base = new URL(PG_BASE);
    const dir = await withDb("postgres", async (c) => (await c.query("SHOW unix_socket_directories")).rows[0].unix_socket_directories.split(",")[0].trim());
    // A database that does not exist yet: migrate creates it (through the maintenance database) and then its schema.
    const name = `bst_cli_socket_${process.pid}_${Date.now() % 100000}`;
    try {
      const url = `postgresql://${base.username || "postgres"}@/${name}?host=${encodeURIComponent(dir)}&port=${base.port || 5432}`;
      const r = run(["migrate"], { DATABASE_URL: url });
      assert.equal(r.code, 0, r.err);
      const n = await withDb(name, async (c) => (await c.query("SELECT count(*)::int AS n FROM pg_namespace WHERE nspname = 'branchsync'")).rows[0].n);
      assert.equal(n, 1, "migrate created the hub's database and schema through the socket");
    } finally {
      await withDb("postgres", (c) => c.query(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`));
    }
  });

  describe("against a hub", () => {
    let c: Cluster;
    before(async () => { c = await startCluster(); });
    after(async () => { await c?.close(); });

    it("creates and lists tenants and branches; prints the API key once", async () => {
      const env = { HUB_ADMIN_URL: `http://127.0.0.1:${c.hub.httpPort}`, ADMIN_TOKEN: "test-admin-token" };
      assert.equal((await runAsync(["admin", "tenant", "create", "shop"], env)).code, 0);
      assert.match((await runAsync(["admin", "tenant", "list"], env)).out, /^shop\s/m);
      const r = await runAsync(["admin", "branch", "create", "shop", "till-1"], env);
      assert.equal(r.code, 0, r.err);
      assert.match(r.out, /API_KEY=bsk_[0-9a-f]{16}_\S{43}/);
      assert.match((await runAsync(["admin", "branch", "list", "shop"], env)).out, /^till-1\s/m);
      const dup = await runAsync(["admin", "tenant", "create", "shop"], env);
      assert.equal(dup.code, 1);
      assert.match(dup.err, /AlreadyExists: tenant "shop" already exists/);
      const noAuth = await runAsync(["admin", "tenant", "list"], { ...env, ADMIN_TOKEN: "wrong" });
      assert.match(noAuth.err, /Unauthenticated/);
    });

    it("refuses a tracked table without a primary key, naming it", async () => {
      const db = await createDb("nopk", "CREATE TABLE logbook (at timestamptz, msg text)");
      try {
        const key = (await c.admin.createBranch({ tenantId: "shop", branchId: "till-2" })).apiKey;
        const r = await runAsync(["agent"], {
          HUB_URL: `http://127.0.0.1:${c.hub.grpcPort}`, HUB_AUTH_URL: `http://127.0.0.1:${c.hub.httpPort}`, TENANT_ID: "shop",
          BRANCH_ID: "till-2", API_KEY: key, LOCAL_DATABASE_URL: db.url, TRACKED_TABLES: "logbook",
        });
        assert.equal(r.code, 2, r.err);
        assert.match(r.err, /table public\.logbook has no primary key/);
        const installed = await db.pool.query("SELECT to_regclass('_branchsync.changes') AS t");
        assert.equal(installed.rows[0].t, null, "nothing installed for a refused config");
      } finally {
        await db.drop();
      }
    });

    it("sets table policies and lists conflicts and the quarantine", async () => {
      const env = { HUB_ADMIN_URL: `http://127.0.0.1:${c.hub.httpPort}`, ADMIN_TOKEN: "test-admin-token" };
      const till = await c.addBranch("shop", "till-3", ITEMS_DDL, ["items"]);
      await till.start();
      await waitFor("table registered", async () => (await c.admin.listTablePolicies({ tenantId: "shop" })).policies.length === 1);
      const set = await runAsync(["admin", "policy", "set", "shop", "public.items", "--strategy", "column-merge", "--delta", "qty"], env);
      assert.equal(set.code, 0, set.err);
      assert.match((await runAsync(["admin", "policy", "list", "shop"], env)).out, /^public\.items\tcolumn-merge\t-\tqty$/m);
      const bad = await runAsync(["admin", "policy", "set", "shop", "public.items", "--strategy", "sometimes"], env);
      assert.equal(bad.code, 2);
      assert.match(bad.err, /--strategy must be one of last-writer-wins, branch-priority, column-merge, manual/);
      const text = await runAsync(["admin", "policy", "set", "shop", "public.items", "--strategy", "last-writer-wins", "--delta", "sku"], env);
      assert.equal(text.code, 1);
      assert.match(text.err, /InvalidArgument: delta column "sku" is text; counters must be/);
      assert.match((await runAsync(["admin", "conflicts", "list", "shop"], env)).out, /^ID\tSTATUS\tTABLE/);
      assert.match((await runAsync(["admin", "conflicts", "show", "shop", "999"], env)).err, /NotFound: conflict 999 does not exist/);
      assert.match((await runAsync(["admin", "quarantine", "list", "shop"], env)).out, /^BRANCH\tSEQ\tSTATUS/);
      await till.stop();
    });
  });
});
