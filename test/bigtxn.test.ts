/**
 * Invariant 4 at size: a transaction far larger than a message (a branch's
 * initial upload, a bulk price change) travels in chunks and is applied in
 * one database transaction, and the hub does it in bounded memory. The hub
 * here is a separate process whose V8 heap is capped well below the
 * transaction's size, so a hub that gathered the transaction's parts at its
 * last chunk dies of it.
 */
import assert from "node:assert/strict";
import { startCluster, ITEMS_DDL, ADMIN_TOKEN, type Cluster, type Branch } from "./support/cluster.ts";
import { waitFor, digest } from "./support/db.ts";
import { spawnHub, kill9, type HubProcess } from "./support/process.ts";
import { freePort } from "./support/ports.ts";

const ROWS = Number(process.env.BIGTXN_ROWS ?? 25_000);
const NOTE_CHARS = 2_000;
/** MiB of old generation the hub may use: a few times its idle need, far below the transaction's 50 MB of rows. */
const HUB_HEAP_MB = 48;

describe("a transaction far larger than a message", function () {
  this.timeout(180_000);
  let c: Cluster;
  let hub: HubProcess;
  let writer: Branch;
  let reader: Branch;
  let depot: Branch;
  let hubExited: Promise<never>;

  before(async () => {
    c = await startCluster();
    const grpc = await freePort(5860);
    const http = await freePort(grpc + 1);
    hub = spawnHub(c.hubDb.url, grpc, http, ADMIN_TOKEN, { NODE_OPTIONS: `--max-old-space-size=${HUB_HEAP_MB}` });
    hubExited = new Promise<never>((_, reject) => hub.child.once("exit", (code, signal) =>
      reject(new Error(`the hub process exited (${code ?? signal}) while it logged the transaction`))));
    hubExited.catch(() => undefined);
    await hub.ready;
    await c.addTenant("bulk");
    const dial = { hubUrl: `http://127.0.0.1:${grpc}`, authUrl: `http://127.0.0.1:${http}` };
    writer = await c.addBranch("bulk", "hq", ITEMS_DDL, ["items"], dial);
    reader = await c.addBranch("bulk", "shop", ITEMS_DDL, ["items"], dial);
    depot = await c.addBranch("bulk", "depot", ITEMS_DDL, ["items"], dial);
    // Capture is installed at the depot, which then stays offline until the second test.
    await depot.start();
    await depot.stop();
  });
  after(async () => {
    if (hub) await kill9(hub.child);
    await c?.close();
  });

  it(`${ROWS} rows of ${NOTE_CHARS} characters in one transaction reach the other branch whole, through a hub with a ${HUB_HEAP_MB} MiB heap`, async () => {
    await Promise.all([writer.start(), reader.start()]);
    await writer.db.pool.query(
      `INSERT INTO items SELECT g, 'sku-' || g, g % 100, (g % 1000) / 100.0, repeat(md5(g::text), $2 / 32), now() FROM generate_series(1, $1) g`,
      [ROWS, NOTE_CHARS]);
    // The reader never shows part of it: READ COMMITTED sees all or nothing of one transaction.
    const seen = new Set<number>();
    await Promise.race([hubExited, waitFor("the whole transaction on the reader", async () => {
      const n = Number((await reader.db.pool.query("SELECT count(*) FROM items")).rows[0].count);
      seen.add(n);
      return n === ROWS;
    }, 150_000, 100)]);
    assert.deepEqual([...seen].filter((n) => n !== 0 && n !== ROWS), [], "the reader saw a part of the transaction");
    assert.equal(await digest(reader.db.pool, "items"), await digest(writer.db.pool, "items"));
    const log = await c.hubDb.pool.query(`SELECT count(DISTINCT seq)::int AS txns, count(*)::int AS parts, sum(n_changes)::int AS changes,
      count(*) FILTER (WHERE last_part)::int AS last FROM tenant_bulk.log`);
    assert.equal(log.rows[0].txns, 1, "one transaction in the hub's log");
    assert.equal(log.rows[0].changes, ROWS);
    assert.equal(log.rows[0].last, 1, "exactly one part marked last");
    assert.ok(log.rows[0].parts > 10, `stored in many parts (${log.rows[0].parts})`);
    const pending = await c.hubDb.pool.query("SELECT count(*)::int AS n FROM tenant_bulk.pending_chunks");
    assert.equal(pending.rows[0].n, 0, "no staged chunks left behind");
  });

  it("a concurrent write to one of its rows is decided against it (the hub reads that image out of the big transaction) and all three branches converge", async () => {
    // The depot never saw the transaction: its insert of row 1 is concurrent with it.
    await depot.db.pool.query(`INSERT INTO items VALUES (1, 'depot-1', 7, 1.00, 'counted at the depot', now())`);
    await depot.start();
    const conflict = await Promise.race([hubExited, waitFor("the conflict on row 1", async () => {
      const r = await c.hubDb.pool.query(`SELECT existing_row, winner_branch FROM tenant_bulk.conflicts WHERE key = '[1]'`);
      return r.rows[0];
    }, 60_000, 100)]);
    assert.match(conflict.existing_row, /"sku":"sku-1"/, "the conflict holds the image the big transaction wrote");
    await Promise.race([hubExited, waitFor("three identical branches", async () => {
      const [w, r, d] = await Promise.all([writer, reader, depot].map((b) => digest(b.db.pool, "items")));
      return w === r && r === d;
    }, 120_000, 200)]);
  });
});
