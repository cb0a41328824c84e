import assert from "node:assert/strict";
import type { ChildProcess } from "node:child_process";
import { startCluster, ITEMS_DDL, AUDIT_DDL, type Cluster, type Branch } from "./support/cluster.ts";
import { waitFor, digest } from "./support/db.ts";
import { spawnAgent, kill9, seeded, testSeed } from "./support/process.ts";


describe("crash safety", function () {
  this.timeout(120_000);
  let c: Cluster;
  let a: Branch;
  let b: Branch;
  const procs = new Map<string, ChildProcess>();

  before(async () => {
    c = await startCluster();
    await c.addTenant("crash");
    // Small batches make the stream long enough to be cut in the middle.
    a = await c.addBranch("crash", "writer", ITEMS_DDL, ["items"], { batchMaxChanges: 150 });
    b = await c.addBranch("crash", "reader", ITEMS_DDL + ";" + AUDIT_DDL, ["items"], { batchMaxChanges: 150 });
  });
  after(async () => {
    for (const p of procs.values()) await kill9(p);
    await c?.close();
  });

  it("kill -9 of both agents mid-stream of 10,000 rows: identical afterwards, nothing applied twice", async () => {
    const rnd = seeded(testSeed());
    procs.set("a", spawnAgent(a.config));
    procs.set("b", spawnAgent(b.config));
    // Rows written before capture is installed are not changes; wait for it.
    for (const br of [a, b]) {
      await waitFor("capture installed", async () =>
        (await br.db.pool.query("SELECT to_regclass('_branchsync.state') IS NOT NULL AS ok")).rows[0].ok, 20_000);
    }
    const writing = (async () => {
      for (let t = 0; t < 100; t++) {
        await a.db.pool.query(`INSERT INTO items SELECT g, 'crash', g % 7, g / 3.0, md5(g::text), now() FROM generate_series(${t * 100 + 1}, ${t * 100 + 100}) g`);
      }
    })();
    const count = async () => (await b.db.pool.query("SELECT count(*)::int AS n FROM items")).rows[0].n as number;
    let kills = 0;
    // Kill at random points while rows are still arriving, a few times.
    for (let round = 0; round < 4; round++) {
      const target = 1000 + Math.floor(rnd() * 7000);
      await waitFor(`${target} rows on the reader`, async () => (await count()) >= Math.min(target, 9000), 60_000, 5);
      if ((await count()) >= 10_000) break;
      const victim = rnd() < 0.5 ? "b" : rnd() < 0.5 ? "a" : "both";
      for (const v of victim === "both" ? ["a", "b"] : [victim]) {
        await kill9(procs.get(v)!);
        kills++;
      }
      await new Promise((r) => setTimeout(r, 50 + rnd() * 300));
      for (const v of ["a", "b"]) {
        const p = procs.get(v)!;
        if (p.exitCode !== null || p.signalCode !== null) procs.set(v, spawnAgent(v === "a" ? a.config : b.config));
      }
    }
    await writing;
    await waitFor("all 10,000 rows on the reader", async () => (await count()) === 10_000, 60_000);
    await waitFor("writer's log drained", async () =>
      (await a.db.pool.query("SELECT count(*)::int AS n FROM _branchsync.changes")).rows[0].n === 0, 30_000);
    assert.ok(kills > 0, "the test must actually kill something");
    assert.equal(await digest(b.db.pool, "items"), await digest(a.db.pool, "items"));
    const audit = await b.db.pool.query("SELECT op, count(*)::int AS n, count(DISTINCT id)::int AS d FROM audit GROUP BY op");
    assert.deepEqual(audit.rows, [{ op: "INSERT", n: 10_000, d: 10_000 }], "every row applied exactly once, never re-applied");
    const hub = await c.hubDb.pool.query("SELECT sum(n_changes)::int AS n, count(DISTINCT origin_txn)::int AS t FROM tenant_crash.log");
    assert.deepEqual(hub.rows[0], { n: 10_000, t: 100 }, "the hub stored every transaction once");
  });
});
