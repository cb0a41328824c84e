import assert from "node:assert/strict";
import { startCluster, ITEMS_DDL, type Cluster, type Branch } from "./support/cluster.ts";
import { waitFor, digest } from "./support/db.ts";
import { seeded, testSeed } from "./support/process.ts";
import type pg from "pg";
import { isDeepStrictEqual } from "node:util";
import { fromBinary } from "@bufbuild/protobuf";
import { TransactionSchema, Op } from "../gen/branchsync/v1/sync_pb.ts";
import { ConflictStrategy } from "../gen/branchsync/v1/admin_pb.ts";
import { changesAt, imageId } from "../hub/store/images.ts";

/**
 * Concurrent writes to the same rows at different branches: whatever the
 * interleaving, once writes stop every branch holds the same rows, decided
 * by each table's conflict strategy, with every conflict on record.
 */
const STOCK_DDL = "CREATE TABLE stock (id int PRIMARY KEY, qty int NOT NULL, price numeric(12,2))";
const branches: Branch[] = [];

describe("convergence under concurrent writes", function () {
  this.timeout(120_000);
  let c: Cluster;
  /** Transactions each branch committed before the property test. */
  const setupTxns = new Map<string, number>();

  before(async () => {
    c = await startCluster();
    await c.addTenant("conv");
    const n = Number(process.env.CONVERGE_BRANCHES ?? 4);
    for (let i = 1; i <= n; i++) branches.push(await c.addBranch("conv", `c${i}`, `${ITEMS_DDL}; ${STOCK_DDL}`, ["items", "stock"]));
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

  it("two branches editing one row while disconnected end with the later edit, and the conflict is recorded", async () => {
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
    const rec = (await c.admin.listConflicts({ tenantId: "conv" })).conflicts;
    assert.deepEqual(rec.map((r) => [r.key, r.kind, r.winnerBranch]), [["[1]", "update/update", "c2"]]);
    for (const x of branches) setupTxns.set(x.branchId, x === a ? 2 : x === b ? 1 : 0);
  });

  /**
   * The convergence property: branches write inserts, updates and deletes on
   * a small key space and sell from shared stock counters, agents stop and
   * restart at random (so many writes are made disconnected); once all is
   * quiet every branch holds identical rows, equal to the hub's versions;
   * every local transaction reached the hub log exactly once; every change
   * that overwrote a version its writer had not seen has a conflict record
   * (and no other change has one); no counter lost a sale.
   */
  it("converges from random concurrent writes with restarts; every conflict is recorded; no sale is lost", async () => {
    const seed = testSeed();
    const rnd = seeded(seed);
    const keys = 12;
    const ops = Number(process.env.CONVERGE_OPS ?? 600);
    await c.admin.setTablePolicy({ tenantId: "conv", policy: { table: "public.stock", strategy: ConflictStrategy.COLUMN_MERGE, deltaColumns: ["qty"] } });
    await branches[0].db.pool.query("INSERT INTO stock SELECT g, 1000, 1.00 FROM generate_series(1, 3) g");
    await converged();
    const sold = [0, 0, 0, 0];
    const committed = new Map<string, number>();
    const wrote = (b: Branch, n: number | null) => { if (n) committed.set(b.branchId, (committed.get(b.branchId) ?? 0) + 1); };
    await Promise.all(branches.map(async (b, bi) => {
      for (let i = 0; i < ops / branches.length; i++) {
        const id = 100 + Math.floor(rnd() * keys);
        const r = rnd();
        if (r < 0.05 && b.agent) { await b.stop(); continue; }
        if (!b.agent && rnd() < 0.3) await b.start();
        if (r < 0.35) {
          wrote(b, (await b.db.pool.query(`INSERT INTO items VALUES ($1, $2, $3, 1, NULL, now())
            ON CONFLICT (id) DO UPDATE SET sku = excluded.sku, qty = items.qty + 1`, [id, `b${bi}-${i}`, i])).rowCount);
        } else if (r < 0.6) {
          wrote(b, (await b.db.pool.query("UPDATE items SET sku = $2, qty = qty + 1 WHERE id = $1", [id, `u${bi}-${i}`])).rowCount);
        } else if (r < 0.75) {
          wrote(b, (await b.db.pool.query("DELETE FROM items WHERE id = $1", [id])).rowCount);
        } else if (r < 0.95) {
          const s = 1 + Math.floor(rnd() * 3);
          const n = 1 + Math.floor(rnd() * 3);
          sold[s] += n;
          wrote(b, (await b.db.pool.query("UPDATE stock SET qty = qty - $2 WHERE id = $1", [s, n])).rowCount);
        } else {
          wrote(b, (await b.db.pool.query("UPDATE stock SET price = $2 WHERE id = $1", [1 + Math.floor(rnd() * 3), (1 + rnd() * 9).toFixed(2)])).rowCount);
        }
        if (rnd() < 0.2) await new Promise((res) => setTimeout(res, rnd() * 20));
      }
    }));
    for (const b of branches) if (!b.agent) await b.start();
    await converged();
    const fail = (m: string) => assert.fail(`${m} (seed ${seed}: rerun with TEST_SEED=${seed})`);

    for (const b of branches) {
      const stock = (await b.db.pool.query("SELECT id, qty FROM stock ORDER BY id")).rows;
      for (const s of stock) {
        if (s.qty !== 1000 - sold[s.id]) {
          await printStockHistory(c.hub.pool, "tenant_conv", sold);
          fail(`${b.branchId}: stock ${s.id} is ${s.qty}, want ${1000 - sold[s.id]}`);
        }
      }
    }
    const hub = c.hub.pool;
    const S = "tenant_conv";
    const perOrigin = new Map((await hub.query(`SELECT origin_branch, count(DISTINCT seq)::int AS n FROM ${S}.log GROUP BY 1`)).rows.map((r) => [r.origin_branch, r.n]));
    for (const b of branches) {
      // c1's setup insert of the stock rows is one more transaction.
      const want = (committed.get(b.branchId) ?? 0) + (b === branches[0] ? 1 : 0) + setupTxns.get(b.branchId)!;
      if (perOrigin.get(b.branchId) !== want) fail(`${b.branchId}: ${perOrigin.get(b.branchId)} transactions in the hub log, ${want} committed`);
    }
    await checkLedger(hub, S, fail);
    await sameAsHub(hub, S, fail);
  });
});

/** For a lost sale: every stock change in the log and every stock conflict record, to see which delta went missing. */
async function printStockHistory(hub: pg.Pool, S: string, sold: number[]) {
  console.log("  units sold per stock row:", sold);
  for (const e of (await hub.query(`SELECT l.seq::text AS seq, l.body, l.conflicts FROM ${S}.log l ORDER BY l.seq, l.part`)).rows) {
    const t = fromBinary(TransactionSchema, e.body);
    for (const ch of t.changes) {
      if (ch.table === "public.stock") console.log(`  log ${e.seq} ${t.originBranch} base ${t.baseSeq} ${ch.key} op ${ch.op} ${ch.row} prev ${ch.prev} conflicts ${e.conflicts}`);
    }
  }
  for (const r of (await hub.query(`SELECT seq, key, kind, existing_branch, incoming_branch, existing_row, incoming_row, result_row, reason FROM ${S}.conflicts WHERE tbl = 'public.stock' ORDER BY id`)).rows) {
    console.log("  conflict", JSON.stringify(r));
  }
}

/** Replays the log against the ledger: a record exactly for each change concurrent with the version it met. */
async function checkLedger(hub: pg.Pool, S: string, fail: (m: string) => never) {
  const recs = new Map<string, { winner: string; incomingDeleted: boolean }[]>();
  for (const r of (await hub.query(`SELECT c.seq::text AS seq, c.tbl, c.key, c.winner_branch, c.incoming_row IS NULL AS gone FROM ${S}.conflicts c ORDER BY c.id`)).rows) {
    const k = `${r.seq}|${r.tbl}|${r.key}`;
    recs.set(k, [...(recs.get(k) ?? []), { winner: r.winner_branch, incomingDeleted: r.gone }]);
  }
  const eff = new Map<string, { seq: bigint; branch: string; exact: boolean; deleted: boolean; lost?: Map<string, bigint> }>();
  let checked = 0;
  for (const e of (await hub.query(`SELECT l.seq::text AS seq, l.body FROM ${S}.log l ORDER BY l.seq, l.part`)).rows) {
    const t = fromBinary(TransactionSchema, e.body);
    const seq = BigInt(e.seq);
    for (const ch of t.changes) {
      const row = `${ch.table}|${ch.key}`;
      const v = eff.get(row);
      const rec = recs.get(`${seq}|${row}`)?.shift();
      // The log holds resolved rows; what the branch wrote is on the record.
      const del = rec ? rec.incomingDeleted : ch.op === Op.DELETE;
      const lostAt = v?.lost?.get(t.originBranch);
      const concurrent = !!v && ((v.seq > t.baseSeq && !(v.exact && v.branch === t.originBranch)) || (lostAt !== undefined && lostAt > t.baseSeq)) && !(v.deleted && del);
      if (concurrent !== !!rec) fail(`seq ${seq} ${row} from ${t.originBranch} (base ${t.baseSeq}) after seq ${v?.seq} of ${v?.branch}: ${concurrent ? "concurrent but no conflict record" : "conflict recorded for a sequential edit"}`);
      checked++;
      if (!rec || rec.winner === t.originBranch) eff.set(row, { seq, branch: t.originBranch, exact: true, deleted: del });
      else if (rec.winner === "") eff.set(row, { seq, branch: "", exact: false, deleted: false });
      // The existing version was kept; only the loser has not seen the row (until it applies this seq).
      else eff.set(row, { ...v!, lost: new Map(v!.lost ?? []).set(t.originBranch, seq) });
    }
  }
  assert.ok(checked > 0);
  for (const [k, left] of recs) if (left.length > 0) fail(`conflict record ${k} matches no change`);
}

/** Every branch holds exactly the hub's newest version of every row. */
async function sameAsHub(hub: pg.Pool, S: string, fail: (m: string) => never) {
  const { rows } = await hub.query(`SELECT tbl, key, op, seq FROM ${S}.row_state`);
  const images = await changesAt(hub, S, rows.filter((r) => r.op !== "D").map((r) => ({ seq: BigInt(r.seq), table: r.tbl, key: r.key })));
  for (const b of branches) {
    for (const r of rows) {
      const table = r.tbl.split(".")[1];
      const id = JSON.parse(r.key)[0];
      const got = (await b.db.pool.query(`SELECT to_jsonb(t) AS j FROM ${table} t WHERE id = $1`, [id])).rows[0]?.j ?? null;
      const want = r.op === "D" ? null : JSON.parse(images.get(imageId(BigInt(r.seq), r.tbl, r.key))!.row);
      if (!isDeepStrictEqual(got, want)) fail(`${b.branchId} ${r.tbl} ${r.key}: ${JSON.stringify(got)} but the hub has ${JSON.stringify(want)}`);
    }
  }
}
