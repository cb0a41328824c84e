import assert from "node:assert/strict";
import pg from "pg";
import { startCluster, ITEMS_DDL, type Cluster, type Branch } from "./support/cluster.ts";
import { waitFor } from "./support/db.ts";
import { metrics } from "../hub/metrics.ts";
import { tenantSchema } from "../hub/store/tenants.ts";

const batchesIn = async () => (await metrics.batchesIn.get()).values[0]?.value ?? 0;

describe("upstream batching", function () {
  this.timeout(60_000);
  let c: Cluster;
  let a: Branch;

  before(async () => {
    c = await startCluster();
    await c.addTenant("batch");
    // A linger far longer than the test: only the ack can end the wait.
    a = await c.addBranch("batch", "till", ITEMS_DDL, ["items"], { batchLingerMs: 60_000 });
    await a.start();
  });
  after(async () => { await c?.close(); });

  it("sends what commits while a small batch is unacknowledged as one batch after its ack", async () => {
    await a.db.pool.query("INSERT INTO items VALUES (1, 'warm', 1, 1, NULL, now())");
    await waitFor("first row in the hub log", async () => (await c.hubDb.pool.query(`SELECT count(*)::int AS n FROM ${tenantSchema("batch")}.log`)).rows[0].n === 1);
    const before = await batchesIn();
    // Holding the tenant's head lock keeps the next batch from being appended (and acked).
    const blocker = new pg.Client({ connectionString: c.hubDb.url });
    await blocker.connect();
    try {
      await blocker.query(`BEGIN; SELECT seq FROM ${tenantSchema("batch")}.head FOR UPDATE`);
      await a.db.pool.query("INSERT INTO items VALUES (2, 'first', 1, 1, NULL, now())");
      await new Promise((r) => setTimeout(r, 300)); // read and sent, now waiting at the lock
      for (let i = 3; i <= 12; i++) {
        await a.db.pool.query("INSERT INTO items VALUES ($1, 'meanwhile', 1, 1, NULL, now())", [i]);
        await new Promise((r) => setTimeout(r, 20));
      }
      await new Promise((r) => setTimeout(r, 300));
      await blocker.query("COMMIT");
    } finally {
      await blocker.end();
    }
    await waitFor("all twelve in the hub log", async () => (await c.hubDb.pool.query(`SELECT count(*)::int AS n FROM ${tenantSchema("batch")}.log`)).rows[0].n === 12);
    assert.equal(await batchesIn() - before, 2, "the blocked batch, then everything committed meanwhile in one");
  });
});
