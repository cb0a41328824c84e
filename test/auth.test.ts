import assert from "node:assert/strict";
import * as grpc from "@grpc/grpc-js";
import { createClient, ConnectError, Code } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { SignJWT, importJWK, generateKeyPair } from "jose";
import { Op, TransactionSchema } from "../gen/branchsync/v1/sync_pb.ts";
import { fromBinary } from "@bufbuild/protobuf";
import { AuthService } from "../gen/branchsync/v1/auth_pb.ts";
import { AdminService } from "../gen/branchsync/v1/admin_pb.ts";
import { startCluster, ITEMS_DDL, type Cluster, type Branch } from "./support/cluster.ts";
import { rawStream, ITEMS_SCHEMA } from "./support/wire.ts";
import { waitFor } from "./support/db.ts";

describe("authentication and tenant isolation", function () {
  this.timeout(60_000);
  let c: Cluster;
  let acme1: Branch;
  let acme2: Branch;
  let globex1: Branch;
  let auth: ReturnType<typeof createClient<typeof AuthService>>;

  const tokenFor = async (b: Branch) => (await auth.issueToken({ apiKey: b.apiKey })).token;
  const logCount = async (tenant: string) =>
    (await c.hubDb.pool.query(`SELECT count(*)::int AS n FROM tenant_${tenant}.log`)).rows[0].n;
  const row = (id: number, sku: string) => ({
    table: "public.items", op: Op.INSERT, key: `[${id}]`,
    row: JSON.stringify({ id, sku, qty: 1, price: 1.5, note: null, updated_at: "2024-01-01T00:00:00+00:00" }),
  });

  before(async () => {
    c = await startCluster();
    await c.addTenant("acme");
    await c.addTenant("globex");
    acme1 = await c.addBranch("acme", "a1", ITEMS_DDL, ["items"]);
    acme2 = await c.addBranch("acme", "a2", ITEMS_DDL, ["items"]);
    globex1 = await c.addBranch("globex", "g1", ITEMS_DDL, ["items"]);
    auth = createClient(AuthService, createConnectTransport({ baseUrl: `http://127.0.0.1:${c.hub.httpPort}`, httpVersion: "1.1" }));
  });
  after(async () => { await c?.close(); });

  it("brings a tenant an older replica created up to this hub's schema at its first Hello", async () => {
    await c.addTenant("lagging");
    const b = await c.addBranch("lagging", "lag1", ITEMS_DDL, ["items"]);
    // As a replica on schema version 8 would have left it (rolling upgrade).
    await c.hubDb.pool.query(`DROP FUNCTION tenant_lagging.row_versions; UPDATE branchsync.tenants SET schema_version = 8 WHERE id = 'lagging'`);
    const s = rawStream(c.hub.grpcPort, await tokenFor(b));
    s.send({ case: "hello", value: { tables: [ITEMS_SCHEMA], agentVersion: "test" } });
    assert.equal((await s.next()).payload.case, "welcome");
    s.close();
    const { rows } = await c.hubDb.pool.query(`SELECT schema_version AS v, to_regprocedure('tenant_lagging.row_versions(text[], text[])') IS NOT NULL AS fn,
      (SELECT max(schema_version) FROM branchsync.tenants WHERE id <> 'lagging') AS latest FROM branchsync.tenants WHERE id = 'lagging'`);
    assert.deepEqual(rows[0], { v: rows[0].latest, fn: true, latest: rows[0].latest });
    assert.ok(rows[0].latest > 8);
  });

  it("brings a tenant an older replica created up to this hub's schema at its first admin call", async () => {
    await c.addTenant("lagging2");
    const O = "tenant_lagging2";
    // What a tenant looked like before conflict tracking (schema version 0).
    await c.hubDb.pool.query(`DROP FUNCTION ${O}.append_plain, ${O}.row_versions; DROP TABLE ${O}.row_state, ${O}.conflicts, ${O}.quarantine;
      ALTER TABLE ${O}.log DROP COLUMN conflicts;
      DROP INDEX ${O}.log_origin_txn_idx; CREATE UNIQUE INDEX ON ${O}.log (origin_branch, origin_txn, part);
      ALTER TABLE ${O}.head DROP COLUMN run_branch, DROP COLUMN run_start;
      ALTER TABLE ${O}.tables DROP COLUMN strategy, DROP COLUMN branch_priority, DROP COLUMN delta_columns;
      UPDATE branchsync.tenants SET schema_version = 0 WHERE id = 'lagging2'`);
    assert.deepEqual((await c.admin.listQuarantined({ tenantId: "lagging2" })).items, []);
    assert.deepEqual((await c.admin.listConflicts({ tenantId: "lagging2" })).conflicts, []);
    const { rows } = await c.hubDb.pool.query(`SELECT schema_version AS v,
      (SELECT max(schema_version) FROM branchsync.tenants WHERE id <> 'lagging2') AS latest FROM branchsync.tenants WHERE id = 'lagging2'`);
    assert.equal(rows[0].v, rows[0].latest);
  });

  it("the agent's own IssueToken call (Connect JSON over node:http) gets a token, and words a refusal", async () => {
    const { issueToken } = await import("../agent/link/auth.ts");
    const base = `http://127.0.0.1:${c.hub.httpPort}`;
    const ok = await issueToken(base, acme1.apiKey);
    assert.deepEqual({ t: ok.tenantId, b: ok.branchId }, { t: "acme", b: "a1" });
    assert.ok(ok.expiresAt > Date.now() / 1000 && ok.token.split(".").length === 3);
    assert.equal(ok.token.split(".")[0], (await auth.issueToken({ apiKey: acme1.apiKey })).token.split(".")[0], "same JWT header as the Connect client gets");
    await assert.rejects(issueToken(`${base}/`, "bsk_nope_nope"), (e: Error & { code?: string }) =>
      e.code === "unauthenticated" && /IssueToken at http:\/\/127\.0\.0\.1:\d+: unauthenticated: /.test(e.message));
    await assert.rejects(issueToken("http://127.0.0.1:9", acme1.apiKey), (e: Error & { code?: string }) => e.code === "unavailable");
  });

  it("refuses a wrong API key with UNAUTHENTICATED", async () => {
    for (const key of ["nonsense", acme1.apiKey.slice(0, -2) + "xx", acme1.apiKey.replace(/^bsk_[0-9a-f]{4}/, "bsk_0000")]) {
      await assert.rejects(auth.issueToken({ apiKey: key }), (e: ConnectError) => e.code === Code.Unauthenticated);
    }
  });

  it("refuses streams without, with forged and with expired tokens, writing nothing", async () => {
    const before = await logCount("acme");
    const { privateKey } = await generateKeyPair("ES256");
    const forged = await new SignJWT({ tenant: "acme" }).setProtectedHeader({ alg: "ES256", kid: "nope" })
      .setIssuer("branchsync-hub").setAudience("branchsync").setSubject("a1").setExpirationTime("10m").sign(privateKey);
    // An expired token signed with the hub's real key.
    const k = (await c.hubDb.pool.query("SELECT kid, private_jwk FROM branchsync.signing_keys")).rows[0];
    const expired = await new SignJWT({ tenant: "acme" }).setProtectedHeader({ alg: "ES256", kid: k.kid })
      .setIssuer("branchsync-hub").setAudience("branchsync").setSubject("a1")
      .setIssuedAt(Math.floor(Date.now() / 1000) - 3600).setExpirationTime(Math.floor(Date.now() / 1000) - 60)
      .sign(await importJWK(k.private_jwk, "ES256"));
    for (const [what, token] of [["no token", ""], ["forged", forged], ["expired", expired]] as const) {
      const s = rawStream(c.hub.grpcPort, token);
      s.send({ case: "hello", value: { tables: [ITEMS_SCHEMA], agentVersion: "test" } });
      s.send({ case: "changes", value: { batchId: 1n, transactions: [{ originTxn: 1n, lastChunk: true, changes: [row(1, what)] }] } });
      const st = await s.status;
      assert.equal(st.code, grpc.status.UNAUTHENTICATED, `${what}: ${st.details}`);
      if (what === "expired") assert.match(st.details, /expired/);
    }
    assert.equal(await logCount("acme"), before);
  });

  it("refuses a token of another tenant or branch with PERMISSION_DENIED, writing nothing", async () => {
    const before = await logCount("acme");
    const beforeG = await logCount("globex");
    const globexToken = await tokenFor(globex1);
    for (const hello of [{ expectedTenantId: "acme" }, { expectedTenantId: "globex", expectedBranchId: "a1" }]) {
      const s = rawStream(c.hub.grpcPort, globexToken, "acme");
      s.send({ case: "hello", value: { tables: [ITEMS_SCHEMA], agentVersion: "test", ...hello } });
      s.send({ case: "changes", value: { batchId: 1n, transactions: [{ originTxn: 1n, lastChunk: true, changes: [row(2, "evil")] }] } });
      const st = await s.status;
      assert.equal(st.code, grpc.status.PERMISSION_DENIED, st.details);
      assert.doesNotMatch(st.details, /acme/, "error messages must not name other tenants");
    }
    assert.equal(await logCount("acme"), before);
    assert.equal(await logCount("globex"), beforeG);
  });

  it("ignores origin and tenant claims in message fields: identity is the token's", async () => {
    const s = rawStream(c.hub.grpcPort, await tokenFor(acme1), "globex");
    s.send({ case: "hello", value: { tables: [ITEMS_SCHEMA], agentVersion: "test" } });
    const w = await s.next();
    assert.equal(w.payload.case, "welcome");
    s.send({ case: "changes", value: { batchId: 1n, transactions: [{ originTxn: 77n, originBranch: "g1", seq: 999n, lastChunk: true, changes: [row(3, "forged-origin")] }] } });
    let ack = await s.next();
    while (ack.payload.case !== "batchAck") ack = await s.next();
    s.close();
    const r = await c.hubDb.pool.query("SELECT origin_branch, seq::int FROM tenant_acme.log WHERE origin_txn = 77");
    const body = (await c.hubDb.pool.query("SELECT body FROM tenant_acme.log WHERE origin_txn = 77")).rows[0].body;
    assert.equal(fromBinary(TransactionSchema, body).originBranch, "a1", "the stored transaction names the token's branch");
    assert.deepEqual(r.rows, [{ origin_branch: "a1", seq: r.rows[0].seq }]);
    assert.notEqual(r.rows[0].seq, 999);
    assert.equal(await logCount("globex"), 0);
  });

  it("keeps tenants apart end to end: same table names, no data crosses", async () => {
    await acme1.start();
    await acme2.start();
    await globex1.start();
    await acme1.db.pool.query("INSERT INTO items VALUES (500, 'acme-secret', 1, 1, NULL, now())");
    await globex1.db.pool.query("INSERT INTO items VALUES (600, 'globex-secret', 1, 1, NULL, now())");
    await waitFor("acme row at a2", async () => (await acme2.db.pool.query("SELECT 1 FROM items WHERE id = 500")).rowCount === 1);
    await waitFor("globex row acked", async () => (await globex1.agent!.pendingLocal()) === 0);
    await new Promise((r) => setTimeout(r, 300));
    assert.equal((await globex1.db.pool.query("SELECT count(*)::int AS n FROM items WHERE id <> 600")).rows[0].n, 0);
    assert.equal((await acme2.db.pool.query("SELECT count(*)::int AS n FROM items WHERE id = 600")).rows[0].n, 0);
    // Storage: each tenant's log holds only its own branches' transactions.
    const g = await c.hubDb.pool.query("SELECT DISTINCT origin_branch FROM tenant_globex.log");
    assert.deepEqual(g.rows.map((r) => r.origin_branch), ["g1"]);
    const a = await c.hubDb.pool.query("SELECT DISTINCT origin_branch FROM tenant_acme.log ORDER BY 1");
    assert.ok(a.rows.every((r) => r.origin_branch.startsWith("a")));
  });

  it("admin calls need the admin token", async () => {
    const admin = createClient(AdminService, createConnectTransport({ baseUrl: `http://127.0.0.1:${c.hub.httpPort}`, httpVersion: "1.1" }));
    await assert.rejects(admin.listTenants({}), (e: ConnectError) => e.code === Code.Unauthenticated);
    const withBranchToken = createClient(AdminService, createConnectTransport({
      baseUrl: `http://127.0.0.1:${c.hub.httpPort}`, httpVersion: "1.1",
      interceptors: [(next) => async (req) => { req.header.set("authorization", `Bearer ${await tokenFor(acme1)}`); return next(req); }],
    }));
    await assert.rejects(withBranchToken.createTenant({ id: "evil" }), (e: ConnectError) => e.code === Code.Unauthenticated);
    // The conflict and quarantine calls change or reveal tenant data too.
    const calls: [string, () => Promise<unknown>][] = [
      ["setTablePolicy", () => withBranchToken.setTablePolicy({ tenantId: "acme", policy: { table: "public.items" } })],
      ["listConflicts", () => admin.listConflicts({ tenantId: "acme" })],
      ["getConflict", () => admin.getConflict({ tenantId: "acme", id: 1n })],
      ["resolveConflict", () => withBranchToken.resolveConflict({ tenantId: "acme", id: 1n })],
      ["listQuarantined", () => admin.listQuarantined({ tenantId: "acme" })],
      ["retryQuarantined", () => withBranchToken.retryQuarantined({ tenantId: "acme", branchId: "a1", seq: 1n })],
      ["discardQuarantined", () => admin.discardQuarantined({ tenantId: "acme", branchId: "a1", seq: 1n })],
      ["listTablePolicies", () => admin.listTablePolicies({ tenantId: "acme" })],
    ];
    for (const [name, call] of calls) await assert.rejects(call(), (e: ConnectError) => e.code === Code.Unauthenticated, name);
  });
});
