import assert from "node:assert/strict";
import { ConflictStrategy, ConflictStatus, QuarantineStatus, Resolution } from "../gen/branchsync/v1/admin_pb.ts";
import type { ConflictNotice } from "../gen/branchsync/v1/sync_pb.ts";
import { startCluster, type Cluster, type Branch } from "./support/cluster.ts";
import { waitFor, digest } from "./support/db.ts";

/**
 * Conflicts end to end: every kind under every strategy, notices, the
 * ledger, manual resolution, counters, and apply failures that must not
 * block the stream.
 */
const TABLES = ["t_lww", "t_prio", "t_merge", "t_manual"];
const DDL = [
  ...TABLES.map((t) => `CREATE TABLE ${t} (id int PRIMARY KEY, a text, b text)`),
  "CREATE TABLE stock (id int PRIMARY KEY, qty int NOT NULL, price numeric(12,2))",
  "CREATE TABLE t_q (id int PRIMARY KEY, v int)",
].join(";\n");
// Branch q refuses large v: its copy of t_q has a constraint the others lack.
const Q_DDL = DDL.replace("CREATE TABLE t_q (id int PRIMARY KEY, v int)", () => `CREATE TABLE t_q (id int PRIMARY KEY, v int CONSTRAINT v_small CHECK (v < 100));
  CREATE TABLE audit (n serial, id int, op text);
  CREATE FUNCTION audit_fn() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN INSERT INTO audit(id, op) VALUES (coalesce(NEW.id, OLD.id), TG_OP); RETURN NULL; END $$;
  CREATE TRIGGER audit_q AFTER INSERT OR UPDATE OR DELETE ON t_q FOR EACH ROW EXECUTE FUNCTION audit_fn()`);
const ALL = [...TABLES, "stock", "t_q"];

describe("conflicts", function () {
  this.timeout(120_000);
  let c: Cluster;
  let a: Branch, b: Branch, hq: Branch, q: Branch;
  const notices = new Map<string, ConflictNotice[]>();
  const T = "cf";

  before(async () => {
    c = await startCluster();
    await c.addTenant(T);
    a = await c.addBranch(T, "a", DDL, ALL);
    b = await c.addBranch(T, "b", DDL, ALL);
    hq = await c.addBranch(T, "hq", DDL, ALL);
    q = await c.addBranch(T, "q", Q_DDL, ALL);
    for (const x of [a, b, hq, q]) await start(x);
    await waitFor("tables registered", async () => (await c.admin.listTablePolicies({ tenantId: T })).policies.length === ALL.length);
    const set = (table: string, strategy: ConflictStrategy, extra: { branchPriority?: string[]; deltaColumns?: string[] } = {}) =>
      c.admin.setTablePolicy({ tenantId: T, policy: { table: `public.${table}`, strategy, ...extra } });
    await set("t_prio", ConflictStrategy.BRANCH_PRIORITY, { branchPriority: ["hq", "a"] });
    await set("t_merge", ConflictStrategy.COLUMN_MERGE);
    await set("t_manual", ConflictStrategy.MANUAL);
    await set("stock", ConflictStrategy.LAST_WRITER_WINS, { deltaColumns: ["qty"] });
    // Policies are cached for up to a second per replica.
    await new Promise((r) => setTimeout(r, 1100));
  });
  after(async () => { await c?.close(); });

  async function start(x: Branch) {
    const agent = await x.start();
    agent.onConflict = (n) => { const l = notices.get(x.branchId) ?? []; l.push(n); notices.set(x.branchId, l); };
  }

  const everyone = () => [a, b, hq, q];
  async function synced(branches = everyone(), tables = ALL) {
    await waitFor("branches identical", async () => {
      for (const x of branches) if (!x.agent || (await x.agent.pendingLocal()) !== 0) return false;
      for (const t of tables) {
        const d = await Promise.all(branches.map((x) => digest(x.db.pool, t)));
        if (!d.every((v) => v === d[0])) return false;
      }
      return true;
    }, 30_000, 50);
  }
  const row = async (x: Branch, table: string, id: number) =>
    (await x.db.pool.query(`SELECT a, b FROM ${table} WHERE id = $1`, [id])).rows[0] ?? null;
  const conflictsOf = async (table: string) =>
    (await c.admin.listConflicts({ tenantId: T, table: `public.${table}`, limit: 1000 })).conflicts;

  /**
   * Every kind of conflict under every strategy, in one partition: a writes
   * first, then b (later clock); a is sequenced first, so b's change is the
   * incoming one and a's the existing version.
   */
  it("decides every conflict kind by each table's strategy, the same on every branch, and records it", async () => {
    const keys = { uu: 1, ii: 2, ud: 3, du: 4 };
    for (const t of TABLES) {
      for (const id of [keys.uu, keys.ud, keys.du]) await hq.db.pool.query(`INSERT INTO ${t} VALUES ($1, 'init', 'init')`, [id]);
    }
    await synced();
    await a.stop();
    await b.stop();
    for (const t of TABLES) {
      await a.db.pool.query(`UPDATE ${t} SET a = 'A' WHERE id = ${keys.uu}`);
      await a.db.pool.query(`INSERT INTO ${t} VALUES (${keys.ii}, 'A1', 'A1')`);
      await a.db.pool.query(`UPDATE ${t} SET a = 'A' WHERE id = ${keys.ud}`);
      await a.db.pool.query(`DELETE FROM ${t} WHERE id = ${keys.du}`);
    }
    await new Promise((r) => setTimeout(r, 20));
    for (const t of TABLES) {
      await b.db.pool.query(`UPDATE ${t} SET b = 'B' WHERE id = ${keys.uu}`);
      await b.db.pool.query(`INSERT INTO ${t} VALUES (${keys.ii}, 'B1', 'B1')`);
      await b.db.pool.query(`DELETE FROM ${t} WHERE id = ${keys.ud}`);
      await b.db.pool.query(`UPDATE ${t} SET b = 'B' WHERE id = ${keys.du}`);
    }
    await start(a);
    await waitFor("a's changes sequenced", async () => (await a.agent!.pendingLocal()) === 0);
    await start(b);
    await synced();

    const A = { a: "A", b: "init" }, B = { a: "init", b: "B" }, AB = { a: "A", b: "B" };
    const A1 = { a: "A1", b: "A1" }, B1 = { a: "B1", b: "B1" };
    const expected: Record<string, Record<number, object | null>> = {
      // The later clock (b) wins whole rows.
      t_lww: { [keys.uu]: B, [keys.ii]: B1, [keys.ud]: null, [keys.du]: B },
      // a outranks b.
      t_prio: { [keys.uu]: A, [keys.ii]: A1, [keys.ud]: A, [keys.du]: null },
      // Different columns both survive; a delete is decided for the row by the clock.
      t_merge: { [keys.uu]: AB, [keys.ii]: B1, [keys.ud]: null, [keys.du]: B },
      // The existing version stays until an operator decides.
      t_manual: { [keys.uu]: A, [keys.ii]: A1, [keys.ud]: A, [keys.du]: null },
    };
    for (const t of TABLES) {
      for (const x of everyone()) {
        for (const [id, want] of Object.entries(expected[t])) {
          assert.deepEqual(await row(x, t, Number(id)), want, `${t} id ${id} at ${x.branchId}`);
        }
      }
      const recorded = await conflictsOf(t);
      assert.deepEqual(recorded.map((r) => `${r.key}:${r.kind}`).sort(),
        [`[${keys.uu}]:update/update`, `[${keys.ii}]:insert/insert`, `[${keys.ud}]:update/delete`, `[${keys.du}]:delete/update`].sort(), t);
      for (const r of recorded) {
        assert.equal(r.existingBranch, "a");
        assert.equal(r.incomingBranch, "b");
        assert.equal(r.status, t === "t_manual" ? ConflictStatus.OPEN : ConflictStatus.RESOLVED);
      }
    }
    // The losers heard about it: a lost the last-writer-wins update/update, b the priority one.
    await waitFor("notices", async () =>
      notices.get("a")?.some((n) => n.table === "public.t_lww" && n.key === `[${keys.uu}]` && n.winnerBranch === "b")
      && notices.get("b")?.some((n) => n.table === "public.t_prio" && n.key === `[${keys.uu}]` && n.winnerBranch === "a"
        && n.strategy === "branch-priority" && JSON.parse(n.winnerRow).a === "A"));
    // Conflicts are counted per tenant and table.
    const metrics = await (await fetch(`http://127.0.0.1:${c.hub.httpPort}/metrics`)).text();
    assert.match(metrics, /branchsync_conflicts_total\{tenant="cf",table="public.t_merge",strategy="column-merge"\} 4/);
  });

  it("lets an operator resolve a manual conflict; the chosen row reaches every branch", async () => {
    const open = (await c.admin.listConflicts({ tenantId: T, table: "public.t_manual", status: ConflictStatus.OPEN })).conflicts;
    const uu = open.find((x) => x.key === "[1]")!;
    const r = await c.admin.resolveConflict({ tenantId: T, id: uu.id, resolution: Resolution.ROW, row: '{"id": 1, "a": "A", "b": "B"}' });
    assert.equal(r.conflict!.status, ConflictStatus.RESOLVED_MANUALLY);
    const ii = open.find((x) => x.key === "[2]")!;
    await c.admin.resolveConflict({ tenantId: T, id: ii.id, resolution: Resolution.INCOMING });
    await waitFor("resolutions everywhere", async () => {
      for (const x of everyone()) {
        const r1 = await row(x, "t_manual", 1);
        const r2 = await row(x, "t_manual", 2);
        if (r1?.b !== "B" || r2?.a !== "B1") return false;
      }
      return true;
    });
    await assert.rejects(c.admin.resolveConflict({ tenantId: T, id: uu.id, resolution: Resolution.EXISTING }), /not open/);
    const ud = open.find((x) => x.key === "[3]")!;
    await assert.rejects(c.admin.resolveConflict({ tenantId: T, id: ud.id, resolution: Resolution.ROW, row: '{"id": 9, "a": "x", "b": "y"}' }), /primary key/);
    assert.equal((await c.admin.getConflict({ tenantId: T, id: ud.id })).conflict!.status, ConflictStatus.OPEN);
    // Keeping what is there: a live row (update/delete) and a deleted one (delete/update).
    const du = open.find((x) => x.key === "[4]")!;
    for (const x of [ud, du]) {
      const r2 = await c.admin.resolveConflict({ tenantId: T, id: x.id, resolution: Resolution.EXISTING });
      assert.equal(r2.conflict!.status, ConflictStatus.RESOLVED_MANUALLY);
      assert.ok(r2.conflict!.resolutionSeq > 0n);
    }
    await synced();
    for (const x of everyone()) {
      assert.deepEqual(await row(x, "t_manual", 3), { a: "A", b: "init" }, x.branchId);
      assert.equal(await row(x, "t_manual", 4), null, x.branchId);
    }
    assert.equal((await c.admin.listConflicts({ tenantId: T, status: ConflictStatus.OPEN })).conflicts.length, 0);
  });

  it("raises no conflict for sequential edits at different branches", async () => {
    await a.db.pool.query("INSERT INTO t_lww VALUES (50, 'a1', 'a1')");
    await waitFor("b has a's row", async () => (await row(b, "t_lww", 50))?.a === "a1");
    await b.db.pool.query("UPDATE t_lww SET a = 'b2' WHERE id = 50");
    await waitFor("hq has b's edit", async () => (await row(hq, "t_lww", 50))?.a === "b2");
    await hq.db.pool.query("DELETE FROM t_lww WHERE id = 50");
    await synced();
    assert.equal((await conflictsOf("t_lww")).filter((r) => r.key === "[50]").length, 0);
    for (const x of everyone()) assert.equal(await row(x, "t_lww", 50), null);
  });

  it("adds up concurrent decrements of a counter: two tills selling 50 each while apart", async () => {
    await hq.db.pool.query("INSERT INTO stock VALUES (1, 1000, 9.99)");
    await synced();
    await a.stop();
    await b.stop();
    for (let i = 0; i < 50; i++) {
      await a.db.pool.query("UPDATE stock SET qty = qty - 1 WHERE id = 1");
      await b.db.pool.query("UPDATE stock SET qty = qty - 1 WHERE id = 1");
    }
    // A concurrent price change elsewhere must not undo the sales either.
    await hq.db.pool.query("UPDATE stock SET price = 8.99 WHERE id = 1");
    await start(a);
    await start(b);
    await synced();
    for (const x of everyone()) {
      assert.deepEqual((await x.db.pool.query("SELECT qty, price::text FROM stock WHERE id = 1")).rows[0], { qty: 900, price: "8.99" }, x.branchId);
    }
    assert.ok((await conflictsOf("stock")).length > 0, "the concurrent decrements were recorded as conflicts");
  });

  it("refuses a branch whose clock is 10 minutes ahead until it is fixed; its edit then loses to a later real edit", async () => {
    const s = await c.addBranch(T, "s", DDL, ALL, { clockSkewMs: 10 * 60_000 });
    await start(s);
    await hq.db.pool.query("INSERT INTO t_lww VALUES (60, 'init', 'init')");
    await synced([a, b, hq, q, s]);
    await s.db.pool.query("UPDATE t_lww SET a = 'from-fast-clock' WHERE id = 60");
    await waitFor("the hub refuses s", async () => /FAILED_PRECONDITION.*clock is 6\d\d s ahead/.test(s.agent!.status().lastError ?? ""));
    await new Promise((r) => setTimeout(r, 20));
    await b.db.pool.query("UPDATE t_lww SET a = 'later-real-edit' WHERE id = 60");
    await synced();
    for (const x of everyone()) assert.equal((await row(x, "t_lww", 60)).a, "later-real-edit");
    // Its change waited at the branch, not lost; with the clock fixed it is
    // sent, found concurrent with b's, and loses on the clock.
    assert.ok((await s.agent!.pendingLocal()) > 0);
    await s.stop();
    s.config.clockSkewMs = 0;
    await start(s);
    await synced([a, b, hq, q, s]);
    for (const x of [...everyone(), s]) assert.equal((await row(x, "t_lww", 60)).a, "later-real-edit");
    const rec = (await conflictsOf("t_lww")).filter((r) => r.key === "[60]");
    assert.deepEqual(rec.map((r) => [r.existingBranch, r.incomingBranch, r.winnerBranch]), [["b", "s", "b"]]);
    await s.stop();
  });

  it("quarantines a transaction a branch cannot apply, keeps applying later ones, and applies it once on retry", async () => {
    await a.db.pool.query("INSERT INTO t_q VALUES (1, 500)");
    await a.db.pool.query("INSERT INTO t_q VALUES (2, 5)");
    await a.db.pool.query("INSERT INTO t_q VALUES (4, 700)");
    await waitFor("later change arrived at q", async () => (await q.db.pool.query("SELECT 1 FROM t_q WHERE id = 2")).rowCount === 1);
    assert.equal((await q.db.pool.query("SELECT 1 FROM t_q WHERE id = 1")).rowCount, 0);
    const [listed, other] = await waitFor("NACKs recorded at the hub", async () => {
      const r = await c.admin.listQuarantined({ tenantId: T, branchId: "q" });
      return r.items.length === 2 ? r.items.sort((x, y) => Number(x.seq - y.seq)) : null;
    });
    assert.deepEqual(other.rows, ["public.t_q [4]"]);
    // The operator gives up on one of them: the branch drops it.
    await c.admin.discardQuarantined({ tenantId: T, branchId: "q", seq: other.seq });
    await waitFor("discarded", async () => (await c.admin.listQuarantined({ tenantId: T, branchId: "q", status: QuarantineStatus.DISCARDED })).items.length === 1);
    assert.equal((await q.db.pool.query("SELECT status FROM _branchsync.quarantine WHERE seq = $1", [other.seq.toString()])).rows[0].status, "discarded");
    assert.equal(listed.status, QuarantineStatus.QUARANTINED);
    assert.equal(listed.sqlstate, "23514");
    assert.match(listed.error, /v_small/);
    assert.deepEqual(listed.rows, ["public.t_q [1]"]);
    assert.equal((await q.db.pool.query("SELECT count(*)::int AS n FROM _branchsync.quarantine WHERE status = 'quarantined'")).rows[0].n, 1);
    assert.equal((await q.db.pool.query("SELECT 1 FROM t_q WHERE id = 4")).rowCount, 0);
    // The stream is not blocked: more changes keep flowing to q.
    await a.db.pool.query("INSERT INTO t_q VALUES (3, 7)");
    await waitFor("still flowing", async () => (await q.db.pool.query("SELECT 1 FROM t_q WHERE id = 3")).rowCount === 1);

    // A retry before the cause is fixed fails again and stays quarantined.
    await c.admin.retryQuarantined({ tenantId: T, branchId: "q", seq: listed.seq });
    await waitFor("retry answered", async () => {
      const r = (await c.admin.listQuarantined({ tenantId: T, branchId: "q" })).items.find((x) => x.seq === listed.seq)!;
      return r.status === QuarantineStatus.QUARANTINED;
    });
    await q.db.pool.query("ALTER TABLE t_q DROP CONSTRAINT v_small");
    await c.admin.retryQuarantined({ tenantId: T, branchId: "q", seq: listed.seq });
    await waitFor("retry applied", async () => (await c.admin.listQuarantined({ tenantId: T, branchId: "q", status: QuarantineStatus.APPLIED })).items.length === 1);
    assert.deepEqual((await q.db.pool.query("SELECT v FROM t_q WHERE id = 1")).rows, [{ v: 500 }]);
    await assert.rejects(c.admin.retryQuarantined({ tenantId: T, branchId: "q", seq: listed.seq }), /already applied/);
    assert.deepEqual((await q.db.pool.query("SELECT op FROM audit WHERE id = 1")).rows, [{ op: "INSERT" }], "applied exactly once");
    // The discarded row stays missing at q until it changes again; then the full image heals it.
    await a.db.pool.query("UPDATE t_q SET v = 701 WHERE id = 4");
    await synced();
  });

  it("quarantines a transaction too large for one message whole, chunks and all", async () => {
    await q.db.pool.query("ALTER TABLE t_q ADD CONSTRAINT v_limit CHECK (v < 100000)");
    await a.db.pool.query("INSERT INTO t_q SELECT g, CASE WHEN g = 3500 THEN 200000 ELSE g END FROM generate_series(1000, 3999) g");
    await a.db.pool.query("INSERT INTO t_q VALUES (5000, 1)");
    await waitFor("the next transaction arrived at q", async () => (await q.db.pool.query("SELECT 1 FROM t_q WHERE id = 5000")).rowCount === 1, 30_000);
    assert.equal((await q.db.pool.query("SELECT count(*)::int AS n FROM t_q WHERE id BETWEEN 1000 AND 3999")).rows[0].n, 0, "none of it applied");
    const big = await waitFor("NACKed", async () =>
      (await c.admin.listQuarantined({ tenantId: T, branchId: "q", status: QuarantineStatus.QUARANTINED })).items.find((x) => x.rows.length === 3000));
    assert.match(big.error, /v_limit/);
    await q.db.pool.query("ALTER TABLE t_q DROP CONSTRAINT v_limit");
    await c.admin.retryQuarantined({ tenantId: T, branchId: "q", seq: big.seq });
    await synced();
    assert.equal((await q.db.pool.query("SELECT count(*)::int AS n FROM audit WHERE id BETWEEN 1000 AND 3999")).rows[0].n, 3000, "each row applied once");
  });
});
