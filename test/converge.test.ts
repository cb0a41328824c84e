import assert from "node:assert/strict";
import { startCluster, ITEMS_DDL, type Cluster, type Branch } from "./support/cluster.ts";
import { waitFor, digest } from "./support/db.ts";
import { seeded, testSeed } from "./support/process.ts";

/**
 * Concurrent writes to the same rows at different branches: whatever the
 * interleaving, once writes stop every branch holds the same rows (the
 * tenant's sequence order decides: the change sequenced last wins).
 */
describe("convergence under concurrent writes", function () {
  this.timeout(120_000);
  let c: Cluster;
  const branches: Branch[] = [];

  before(async () => {
    c = await startCluster();
    await c.addTenant("conv");
    for (const id of ["c1", "c2", "c3"]) branches.push(await c.addBranch("conv", id, ITEMS_DDL, ["items"]));
    for (const b of branches) await b.start();
  });
  after(async () => { await c?.close(); });

  async function converged() {
    await waitFor("every branch identical", async () => {
      for (const b of branches) if ((await b.agent!.pendingLocal()) !== 0) return false;
      const d = await Promise.all(branches.map((b) => digest(b.db.pool, "items")));
      return d.every((x) => x === d[0]);
    }, 30_000, 100).catch(async (e) => {
      for (const b of branches) {
        console.log(b.branchId, await b.agent?.pendingLocal(), b.agent?.status(), (await b.db.pool.query("SELECT id, sku, qty FROM items ORDER BY id")).rows.map((r) => `${r.id}:${r.sku}:${r.qty}`).join(" "));
        console.log("  txns", (await b.db.pool.query("SELECT txid::text, seq, n FROM _branchsync.txns")).rows);
      }
      throw e;
    });
  }

  it("two branches editing one row while disconnected end with the edit sequenced last", async () => {
    const [a, b] = branches;
    await a.db.pool.query("INSERT INTO items VALUES (1, 'start', 0, 1, NULL, now())");
    await waitFor("row everywhere", async () => {
      for (const x of branches) if ((await x.db.pool.query("SELECT 1 FROM items WHERE id = 1")).rowCount !== 1) return false;
      return true;
    });
    await a.stop();
    await b.stop();
    await a.db.pool.query("UPDATE items SET sku = 'from-a' WHERE id = 1");
    await b.db.pool.query("UPDATE items SET sku = 'from-b' WHERE id = 1");
    await a.start();
    await waitFor("a's edit sequenced", async () => (await a.agent!.pendingLocal()) === 0);
    await b.start();
    await converged();
    for (const x of branches) {
      assert.equal((await x.db.pool.query("SELECT sku FROM items WHERE id = 1")).rows[0].sku, "from-b");
    }
  });

  it("random concurrent inserts, updates and deletes on a small key space, with agents restarting", async () => {
    const rnd = seeded(testSeed());
    const keys = 12;
    const ops = Number(process.env.CONVERGE_OPS ?? 300);
    await Promise.all(branches.map(async (b, bi) => {
      for (let i = 0; i < ops / branches.length; i++) {
        const id = 100 + Math.floor(rnd() * keys);
        const r = rnd();
        if (r < 0.05 && b.agent) { await b.stop(); continue; }
        if (!b.agent && rnd() < 0.3) await b.start();
        if (r < 0.45) {
          await b.db.pool.query(`INSERT INTO items VALUES ($1, $2, $3, 1, NULL, now())
            ON CONFLICT (id) DO UPDATE SET sku = excluded.sku, qty = items.qty + 1`, [id, `b${bi}-${i}`, i]);
        } else if (r < 0.8) {
          await b.db.pool.query("UPDATE items SET sku = $2, qty = qty + 1 WHERE id = $1", [id, `u${bi}-${i}`]);
        } else {
          await b.db.pool.query("DELETE FROM items WHERE id = $1", [id]);
        }
        if (rnd() < 0.2) await new Promise((res) => setTimeout(res, rnd() * 20));
      }
    }));
    for (const b of branches) if (!b.agent) await b.start();
    await converged();
  });
});
