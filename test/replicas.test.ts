import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import net from "node:net";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { AdminService } from "../gen/branchsync/v1/admin_pb.ts";
import { startHub, type Hub } from "../hub/main.ts";
import { startAgent, type Agent } from "../agent/main.ts";
import { ADMIN_TOKEN, ITEMS_DDL, hubConfig, quiet } from "./support/cluster.ts";
import { createDb, waitFor, digest, type TestDb } from "./support/db.ts";
import { freePort } from "./support/ports.ts";

interface Site { db: TestDb; agent: Agent | null; start(): Promise<void> }

describe("hub replicas, the Redis bridge and restarts", function () {
  this.timeout(90_000);
  const dbs: TestDb[] = [];
  const agents: Agent[] = [];
  const hubs: Hub[] = [];
  let hubDb: TestDb;

  async function hub(overrides: Parameters<typeof hubConfig>[1] = {}): Promise<Hub> {
    const h = await startHub(hubConfig(hubDb.url, overrides), quiet);
    hubs.push(h);
    return h;
  }

  async function site(h: Hub, tenant: string, branch: string): Promise<Site> {
    const admin = createClient(AdminService, createConnectTransport({
      baseUrl: `http://127.0.0.1:${h.httpPort}`, httpVersion: "1.1",
      interceptors: [(next) => (req) => { req.header.set("authorization", `Bearer ${ADMIN_TOKEN}`); return next(req); }],
    }));
    if (!(await admin.listTenants({})).tenants.some((t) => t.id === tenant)) await admin.createTenant({ id: tenant });
    const { apiKey } = await admin.createBranch({ tenantId: tenant, branchId: branch });
    const db = await createDb(branch, ITEMS_DDL);
    dbs.push(db);
    const s: Site = {
      db, agent: null,
      async start() {
        s.agent = await startAgent({
          hubUrl: `http://127.0.0.1:${h.grpcPort}`, authUrl: `http://127.0.0.1:${h.httpPort}`, tenantId: tenant, branchId: branch,
          apiKey, localDatabaseUrl: db.url, databaseSchema: "public", trackedTables: ["items"], batchMaxChanges: 500, batchLingerMs: 5, pollMs: 500,
        }, quiet);
        agents.push(s.agent);
      },
    };
    await s.start();
    return s;
  }

  before(async () => { hubDb = await createDb("hubrep"); });
  afterEach(async () => {
    for (const a of agents.splice(0)) await a.stop().catch(() => undefined);
    for (const h of hubs.splice(0)) await h.close().catch(() => undefined);
  });
  after(async () => {
    for (const d of dbs) await d.drop().catch(() => undefined);
    await hubDb.drop();
  });

  it("wakes a branch on another replica through Redis, long before the fallback poll", async () => {
    const h1 = await hub({ pollMs: 60_000 });
    const h2 = await hub({ pollMs: 60_000 });
    const a = await site(h1, "bridge", "r1");
    const b = await site(h2, "bridge", "r2");
    // Let both sessions settle into waiting on the feed.
    await new Promise((r) => setTimeout(r, 500));
    for (let i = 1; i <= 3; i++) {
      await a.db.pool.query("INSERT INTO items VALUES ($1, 'bridged', 1, 1, NULL, now())", [i]);
      await waitFor(`row ${i} via the bridge`, async () => (await b.db.pool.query("SELECT 1 FROM items WHERE id = $1", [i])).rowCount === 1, 5000);
    }
  });

  it("still converges with Redis unreachable (slower, never wrong)", async () => {
    const h1 = await hub({ redisUrl: "redis://127.0.0.1:1", pollMs: 200 });
    const h2 = await hub({ redisUrl: "redis://127.0.0.1:1", pollMs: 200 });
    const a = await site(h1, "noredis", "n1");
    const b = await site(h2, "noredis", "n2");
    for (let t = 0; t < 20; t++) {
      await a.db.pool.query(`INSERT INTO items SELECT g, 'nr', g, g, NULL, now() FROM generate_series(${t * 10}, ${t * 10 + 9}) g`);
      await b.db.pool.query(`INSERT INTO items VALUES (${100_000 + t}, 'nr-b', 1, 1, NULL, now())`);
    }
    await waitFor("both branches identical", async () =>
      (await digest(a.db.pool, "items")) === (await digest(b.db.pool, "items")) && (await b.db.pool.query("SELECT count(*)::int AS n FROM items")).rows[0].n === 220, 20_000);
  });

  it("wakes branches through Redis again after Redis restarts; what was written meanwhile arrives too", async () => {
    // A Redis of this test's own, to kill; the replicas' fallback poll is a
    // minute, so a row that arrives within seconds came through the bridge.
    const port = await freePort(6390);
    const redis = () => {
      const p = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], { stdio: "ignore" });
      return p;
    };
    let server = redis();
    try {
      const redisUrl = `redis://127.0.0.1:${port}`;
      await waitFor("redis up", () => new Promise<boolean>((resolve) => {
        const s = net.connect(port, "127.0.0.1", () => { s.destroy(); resolve(true); }).on("error", () => resolve(false));
      }), 10_000);
      const h1 = await hub({ redisUrl, pollMs: 60_000 });
      const h2 = await hub({ redisUrl, pollMs: 60_000 });
      const a = await site(h1, "redisback", "rb1");
      const b = await site(h2, "redisback", "rb2");
      await new Promise((r) => setTimeout(r, 500));
      const arrives = async (id: number, ms: number) => {
        await a.db.pool.query("INSERT INTO items VALUES ($1, 'rb', 1, 1, NULL, now())", [id]);
        await waitFor(`row ${id} via the bridge`, async () => (await b.db.pool.query("SELECT 1 FROM items WHERE id = $1", [id])).rowCount === 1, ms);
      };
      await arrives(1, 5000);
      server.kill("SIGKILL");
      await new Promise((r) => server.once("exit", r));
      // Written while Redis is down: no wake-up reaches the other replica.
      await a.db.pool.query("INSERT INTO items VALUES (2, 'rb-outage', 1, 1, NULL, now())");
      await new Promise((r) => setTimeout(r, 1000));
      server = redis();
      // ioredis retries every 5 s at most; then both replicas subscribe again,
      // and the receiving one catches up on the wake-up it missed, long
      // before its minute-long poll.
      await waitFor("the row written during the outage", async () => (await b.db.pool.query("SELECT 1 FROM items WHERE id = 2")).rowCount === 1, 15_000);
      for (let id = 3; id <= 5; id++) await arrives(id, 5000);
      assert.equal((await b.db.pool.query("SELECT count(*)::int AS n FROM items")).rows[0].n, 5);
    } finally {
      server.kill("SIGKILL");
    }
  });

  it("keeps a branch's batches within the hub's limit when the hub's is the lower", async () => {
    // The agents ask for up to 500 changes a batch; this hub takes 100.
    const h = await hub({ maxBatchChanges: 100 });
    const a = await site(h, "smallhub", "s1");
    const b = await site(h, "smallhub", "s2");
    await a.db.pool.query("INSERT INTO items SELECT g, 'small', 1, 1, NULL, now() FROM generate_series(1, 300) g");
    await waitFor("300 rows through a hub taking 100 a batch", async () =>
      (await b.db.pool.query("SELECT count(*)::int AS n FROM items")).rows[0].n === 300, 10_000);
  });

  it("keeps the tenant sequence gap-free and visible in order under concurrent writers on two replicas", async () => {
    const h1 = await hub();
    const h2 = await hub();
    const writers = [await site(h1, "order", "w1"), await site(h2, "order", "w2"), await site(h1, "order", "w3"), await site(h2, "order", "w4")];
    const reader = await site(h2, "order", "rd");
    let done = false;
    let checks = 0;
    const gaps: string[] = [];
    const watcher = (async () => {
      while (!done) {
        const r = await hubDb.pool.query("SELECT count(DISTINCT seq)::int AS n, coalesce(max(seq), 0)::int AS hi FROM tenant_order.log");
        if (r.rows[0].n !== r.rows[0].hi) gaps.push(`saw max seq ${r.rows[0].hi} with only ${r.rows[0].n} transactions`);
        checks++;
      }
    })();
    await Promise.all(writers.map(async (w, wi) => {
      for (let i = 0; i < 100; i++) await w.db.pool.query("INSERT INTO items VALUES ($1, 'o', $2, 1, NULL, now())", [wi * 1000 + i, i]);
    }));
    await waitFor("reader has all 400 rows", async () => (await reader.db.pool.query("SELECT count(*)::int AS n FROM items")).rows[0].n === 400, 30_000);
    done = true;
    await watcher;
    assert.deepEqual(gaps, [], "a reader saw a sequence number before an earlier one committed");
    assert.ok(checks > 10);
    const head = (await hubDb.pool.query("SELECT seq::int FROM tenant_order.head")).rows[0].seq;
    assert.equal(head, 400);
    const want = await digest(reader.db.pool, "items");
    for (const w of writers) await waitFor("writer caught up and identical", async () => (await digest(w.db.pool, "items")) === want, 20_000);
  });

  it("drains on shutdown; agents reconnect to the restarted replica and catch up", async () => {
    const h1 = await hub();
    let h2 = await hub();
    const ports = { grpcPort: h2.grpcPort, httpPort: h2.httpPort };
    const a = await site(h1, "restart", "s1");
    const b = await site(h2, "restart", "s2");
    await a.db.pool.query("INSERT INTO items VALUES (1, 'before', 1, 1, NULL, now())");
    await waitFor("first row", async () => (await b.db.pool.query("SELECT 1 FROM items WHERE id = 1")).rowCount === 1);
    await h2.close();
    hubs.splice(hubs.indexOf(h2), 1);
    assert.equal(b.agent!.status().connected, false);
    await a.db.pool.query("INSERT INTO items SELECT g, 'while down', 1, 1, NULL, now() FROM generate_series(2, 300) g");
    h2 = await hub(ports);
    await waitFor("catch-up after restart", async () => (await b.db.pool.query("SELECT count(*)::int AS n FROM items")).rows[0].n === 300, 30_000);
    assert.equal(await digest(a.db.pool, "items"), await digest(b.db.pool, "items"));
  });

  it("ends a session when its token expires; the agent comes back with a fresh one", async () => {
    const h = await hub({ tokenTtlSeconds: 2 });
    const a = await site(h, "expiry", "e1");
    const b = await site(h, "expiry", "e2");
    await waitFor("connected", async () => b.agent!.status().sessions >= 1);
    const first = b.agent!.status().sessions;
    await waitFor("a second session after the token expired", async () => b.agent!.status().sessions > first, 10_000);
    await a.db.pool.query("INSERT INTO items VALUES (1, 'after expiry', 1, 1, NULL, now())");
    await waitFor("row after re-auth", async () => (await b.db.pool.query("SELECT 1 FROM items WHERE id = 1")).rowCount === 1, 10_000);
  });
});
