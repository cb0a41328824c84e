import assert from "node:assert/strict";
import type { ChildProcess } from "node:child_process";
import { startCluster, ITEMS_DDL, AUDIT_DDL, ADMIN_TOKEN, type Cluster, type Branch } from "./support/cluster.ts";
import { waitFor, digest } from "./support/db.ts";
import { spawnAgent, spawnHub, kill9, seeded, testSeed, type HubProcess } from "./support/process.ts";
import { freePort } from "./support/ports.ts";
import { throwawayCluster, type ThrowawayCluster } from "./support/pgcluster.ts";


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
    a = await c.addBranch("crash", "writer", ITEMS_DDL + ";" + AUDIT_DDL, ["items"], { batchMaxChanges: 150 });
    b = await c.addBranch("crash", "reader", ITEMS_DDL + ";" + AUDIT_DDL, ["items"], { batchMaxChanges: 150 });
  });
  after(async () => {
    for (const p of procs.values()) await kill9(p);
    await c?.close();
  });

  /** Kills either agent or both, and starts again what is down. */
  async function killAgents(rnd: () => number) {
    const victim = rnd() < 0.5 ? "b" : rnd() < 0.5 ? "a" : "both";
    for (const v of victim === "both" ? ["a", "b"] : [victim]) await kill9(procs.get(v)!);
    await new Promise((r) => setTimeout(r, 50 + rnd() * 300));
    for (const v of ["a", "b"]) {
      const p = procs.get(v)!;
      if (p.exitCode !== null || p.signalCode !== null) procs.set(v, spawnAgent(v === "a" ? a.config : b.config));
    }
  }

  /** The writer's transactions through agent kills, a few times; the reader writes nothing. */
  async function killWhileWriting(txns: number, rows: number, base: number): Promise<void> {
    procs.set("a", spawnAgent(a.config));
    procs.set("b", spawnAgent(b.config));
    // Rows written before capture is installed are not changes; wait for it.
    for (const br of [a, b]) {
      await waitFor("capture installed", async () =>
        (await br.db.pool.query("SELECT to_regclass('_branchsync.state') IS NOT NULL AS ok")).rows[0].ok, 20_000);
    }
    try {
      const kills = await writeThrough(c, a, b, "crash", { east: { txns, rows }, west: { txns: 0, rows: 0 }, rounds: 4, base }, killAgents);
      assert.ok(kills > 0, "the test must actually kill something");
    } finally {
      for (const p of procs.values()) await kill9(p);
    }
  }

  it("kill -9 of both agents mid-stream of 10,000 rows: identical afterwards, nothing applied twice", async () => {
    await killWhileWriting(100, 100, 0);
  });

  it("kill -9 of both agents mid-stream of transactions larger than a batch: each arrives whole, once", async () => {
    // 2,000 rows against 150-change batches: in chunks up and down.
    const before = (await c.hubDb.pool.query("SELECT seq::int FROM tenant_crash.head")).rows[0].seq as number;
    await killWhileWriting(8, 2000, 1_000_000);
    const hub = await c.hubDb.pool.query(`SELECT bool_and(whole) AS whole, min(parts)::int AS fewest FROM (
        SELECT seq, count(*) AS parts, count(*) = max(part) + 1 AND count(*) FILTER (WHERE last_part) = 1 AND bool_or(last_part AND part = 0) IS NOT TRUE AS whole
          FROM tenant_crash.log WHERE seq > $1 GROUP BY seq) s`, [before]);
    assert.equal(hub.rows[0].whole, true, "every transaction stored with all its parts");
    assert.ok(hub.rows[0].fewest > 1, "each travelled in chunks");
  });
});

/** Transactions a branch writes in a failure test: how many, and rows in each. */
interface Writes { txns: number; rows: number }

/**
 * Both branches write at once (ids above `base`: east's from base, west's
 * from base + 10,000,000) while `fail` breaks something at random points,
 * up to `rounds` times. Then every row must be on both branches, applied
 * once (their audit tables), and in the hub's log once per transaction, in
 * a gap-free sequence. Returns how many times it failed something.
 */
async function writeThrough(c: Cluster, east: Branch, west: Branch, tenant: string,
  o: { east: Writes; west: Writes; rounds: number; base?: number }, fail: (rnd: () => number) => Promise<void>): Promise<number> {
  const rnd = seeded(testSeed());
  const base = o.base ?? 0;
  const head = async () => Number((await c.hubDb.pool.query(`SELECT seq FROM tenant_${tenant}.head`)).rows[0].seq);
  const before = await head();
  const total = o.east.txns * o.east.rows + o.west.txns * o.west.rows;
  const write = async (br: Branch, w: Writes, from: number) => {
    for (let t = 0; t < w.txns; t++) {
      const lo = from + t * w.rows + 1;
      await br.db.pool.query(`INSERT INTO items SELECT g, $1, g % 7, g / 3.0, md5(g::text), now() FROM generate_series(${lo}, ${lo + w.rows - 1}) g`, [br.branchId]);
    }
  };
  const writes = [write(east, o.east, base), write(west, o.west, base + 10_000_000)];
  const count = async (br: Branch) => (await br.db.pool.query("SELECT count(*)::int AS n FROM items WHERE id > $1", [base])).rows[0].n as number;
  let failures = 0;
  for (let round = 0; round < o.rounds; round++) {
    const target = Math.floor(total * (0.1 + rnd() * 0.55));
    await waitFor(`${target} rows on ${west.branchId}`, async () => (await count(west)) >= target, 60_000, 5);
    if ((await count(west)) >= total) break;
    await fail(rnd);
    failures++;
  }
  await Promise.all(writes);
  for (const br of [east, west]) {
    await waitFor(`all ${total} rows on ${br.branchId}`, async () => (await count(br)) === total, 90_000);
    await waitFor(`${br.branchId}'s change log drained`, async () =>
      (await br.db.pool.query("SELECT count(*)::int AS n FROM _branchsync.changes")).rows[0].n === 0, 30_000);
  }
  assert.equal(await digest(west.db.pool, "items"), await digest(east.db.pool, "items"));
  for (const br of [east, west]) {
    const audit = await br.db.pool.query("SELECT op, count(*)::int AS n, count(DISTINCT id)::int AS d FROM audit WHERE id > $1 GROUP BY op", [base]);
    assert.deepEqual(audit.rows, [{ op: "INSERT", n: total, d: total }], `${br.branchId}: every row written or applied exactly once`);
  }
  const log = await c.hubDb.pool.query(
    `SELECT origin_branch AS b, sum(n_changes)::int AS n, count(DISTINCT origin_txn)::int AS t, count(DISTINCT seq)::int AS seqs FROM tenant_${tenant}.log
      WHERE seq > $1 GROUP BY 1 ORDER BY 1`, [before]);
  const expected = ([[east, o.east], [west, o.west]] as const).filter(([, w]) => w.txns > 0)
    .map(([br, w]) => ({ b: br.branchId, n: w.txns * w.rows, t: w.txns, seqs: w.txns }));
  assert.deepEqual(log.rows, expected.sort((x, y) => x.b.localeCompare(y.b)), "the hub stored every transaction once, under one sequence number");
  const txns = o.east.txns + o.west.txns;
  assert.equal(await head(), before + txns, "a gap-free sequence");
  const entries = await c.hubDb.pool.query(`SELECT count(DISTINCT seq)::int AS n FROM tenant_${tenant}.log WHERE seq > $1`, [before]);
  assert.equal(entries.rows[0].n, txns, "no sequence number missing");
  return failures;
}

describe("crash safety: a hub replica is killed", function () {
  this.timeout(120_000);
  let c: Cluster;
  let a: Branch;
  let b: Branch;
  let hub: HubProcess | null = null;
  let ports: number[];
  const start = async () => {
    hub = spawnHub(c.hubDb.url, ports[0], ports[1], ADMIN_TOKEN);
    await hub.ready;
  };

  before(async () => {
    // The cluster's own hub creates tenant and branches; the agents dial a
    // second replica of it, a process on fixed ports that the test kills.
    c = await startCluster();
    const grpc = await freePort(5760);
    ports = [grpc, await freePort(grpc + 1)];
    await start();
    await c.addTenant("hubcrash");
    const dial = { hubUrl: `http://127.0.0.1:${ports[0]}`, authUrl: `http://127.0.0.1:${ports[1]}`, batchMaxChanges: 150 };
    a = await c.addBranch("hubcrash", "east", ITEMS_DDL + ";" + AUDIT_DDL, ["items"], dial);
    b = await c.addBranch("hubcrash", "west", ITEMS_DDL + ";" + AUDIT_DDL, ["items"], dial);
  });
  after(async () => {
    if (hub) await kill9(hub.child);
    await c?.close();
  });

  it("kill -9 of the hub mid-stream both ways: every transaction stored once, both branches identical, every row applied once", async () => {
    await Promise.all([a.start(), b.start()]);
    const kills = await writeThrough(c, a, b, "hubcrash", { east: { txns: 100, rows: 100 }, west: { txns: 50, rows: 50 }, rounds: 3 }, async (rnd) => {
      await kill9(hub!.child);
      await new Promise((r) => setTimeout(r, 50 + rnd() * 500));
      await start();
    });
    assert.ok(kills > 0, "the test must actually kill the hub");
  });
});

describe("crash safety: the branch's PostgreSQL crashes", function () {
  this.timeout(120_000);
  let c: Cluster;
  let server: ThrowawayCluster;
  let a: Branch;
  let b: Branch;

  before(async () => {
    // The WAL writer then writes at most every 10 s (its longest delay), so
    // what the reader's applies did not flush is still in memory when the
    // server is crashed a moment later.
    server = await throwawayCluster(["wal_writer_delay = 10000ms"]);
    c = await startCluster();
    await c.addTenant("pgcrash");
    a = await c.addBranch("pgcrash", "writer", ITEMS_DDL, ["items"]);
    b = await c.addBranch("pgcrash", "reader", ITEMS_DDL + ";" + AUDIT_DDL, ["items"], {}, server.base);
    await a.start();
    await b.start();
  });
  after(async () => {
    await c?.close();
    await server?.drop();
  });

  it("undoes batches applied without waiting for their flush: the running agent resumes from the cursor the database kept; nothing lost, nothing applied twice", async () => {
    const count = async () => (await b.db.pool.query("SELECT count(*)::int AS n FROM items")).rows[0].n as number;
    let written = 0;
    const write = async (rows: number) => {
      await a.db.pool.query(`INSERT INTO items SELECT g, 'pgcrash', g % 7, g / 3.0, md5(g::text), now() FROM generate_series(${written + 1}, ${written + rows}) g`);
      written += rows;
    };
    await write(100);
    await waitFor("the first rows on the reader", async () => (await count()) === written, 30_000);
    // The transaction that applied the newest row: a different one once it
    // is back means the crash undid the apply and the hub sent it again.
    const applier = async () => (await b.db.pool.query("SELECT xmin::text AS x FROM items WHERE id = $1", [written])).rows[0]?.x as string | undefined;
    let undone = 0;
    // One small transaction: its apply fills no WAL page, which would wake
    // the WAL writer. A wake-up anyway (its tick, or a page filled after the
    // CHECKPOINT's record) flushes it; then try again.
    for (let round = 0; round < 5 && undone === 0; round++) {
      await b.db.pool.query("CHECKPOINT");
      await write(1);
      await waitFor("the new row applied on the reader", async () => (await count()) === written, 30_000);
      const before = await applier();
      await server.crash();
      await server.start();
      const after = await waitFor("the reader has the row again", async () => applier(), 60_000);
      if (after !== before) undone++;
    }
    assert.ok(undone > 0, "the crash undid an applied batch (or this test shows nothing)");
    await waitFor("the reader caught up", async () => (await count()) === written
      && (await b.db.pool.query("SELECT cursor FROM _branchsync.state")).rows[0].cursor === (await c.hubDb.pool.query("SELECT seq FROM tenant_pgcrash.head")).rows[0].seq, 30_000);
    assert.equal(await digest(b.db.pool, "items"), await digest(a.db.pool, "items"));
    const audit = await b.db.pool.query("SELECT op, count(*)::int AS n, count(DISTINCT id)::int AS d FROM audit GROUP BY op");
    assert.deepEqual(audit.rows, [{ op: "INSERT", n: written, d: written }], "every row applied exactly once in what the database kept");
  });

  it("a branch whose server was down for seconds sends its next writes at once: its LISTEN connection comes back", async () => {
    // A minute between polls of the change log: a write that gets there
    // within seconds was announced by NOTIFY.
    await b.stop();
    b.config.pollMs = 60_000;
    await b.start();
    const onWriter = async (id: number) => (await a.db.pool.query("SELECT 1 FROM items WHERE id = $1", [id])).rowCount === 1;
    await server.crash();
    // Longer than the agent's first attempt to listen again.
    await new Promise((r) => setTimeout(r, 2500));
    await server.start();
    for (let id = 900_001; id <= 900_003; id++) {
      await b.db.pool.query("INSERT INTO items VALUES ($1, 'after-crash', 1, 1, NULL, now())", [id]);
      await waitFor(`row ${id} from the restarted branch`, () => onWriter(id), 8000);
    }
  });
});

describe("crash safety: the hub's PostgreSQL crashes", function () {
  this.timeout(120_000);
  let c: Cluster, server: ThrowawayCluster, a: Branch, b: Branch;

  before(async () => {
    server = await throwawayCluster();
    c = await startCluster(server.base);
    await c.addTenant("hubpg");
    a = await c.addBranch("hubpg", "east", ITEMS_DDL + ";" + AUDIT_DDL, ["items"], { batchMaxChanges: 150 });
    b = await c.addBranch("hubpg", "west", ITEMS_DDL + ";" + AUDIT_DDL, ["items"], { batchMaxChanges: 150 });
  });
  after(async () => {
    await c?.close();
    await server?.drop();
  });

  it("the hub keeps running through its database's crash mid-stream both ways: what it acked survives, nothing is stored or applied twice", async () => {
    const agents = await Promise.all([a.start(), b.start()]);
    // Every way a session ended, as the agents saw it (a session ends at most once per backoff).
    const ended = new Set<string>();
    const watch = setInterval(() => { for (const ag of agents) { const e = ag.status().lastError; if (e) ended.add(e.split(":")[0]); } }, 2);
    try {
      const crashes = await writeThrough(c, a, b, "hubpg", { east: { txns: 60, rows: 100 }, west: { txns: 40, rows: 50 }, rounds: 2 }, async (rnd) => {
        await server.crash();
        await new Promise((r) => setTimeout(r, 100 + rnd() * 500));
        await server.start();
      });
      assert.ok(crashes > 0, "the test must actually crash the hub's database");
    } finally {
      clearInterval(watch);
    }
    assert.ok(ended.size > 0, "the crash ended sessions");
    assert.ok(![...ended].includes("INTERNAL"), `a database crash is UNAVAILABLE to clients, not a hub fault (saw ${[...ended].join(", ")})`);
  });
});
