/**
 * Times an initial upload (INITIAL_UPLOAD=true: a branch's existing rows
 * as one transaction) of N rows to a second branch, with the test
 * cluster (hub and both agents in this process) and reports its peak RSS,
 * and how long a till on the receiving branch waited for its one-row
 * writes meanwhile (every 50 ms, into a table of its own that is tracked
 * too): the receiving branch applies the upload in one local transaction,
 * under the lock that holds local writers off while incoming rows are
 * checked against local changes.
 * `node --import tsx bench/initial-upload.ts [rows]`.
 */
import { startCluster, ITEMS_DDL } from "../test/support/cluster.ts";
import { waitFor } from "../test/support/db.ts";
const N = Number(process.argv[2] ?? 200000);
const c = await startCluster();
await c.addTenant("init");
const SALES_DDL = "CREATE TABLE sales (id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())";
const a = await c.addBranch("init", "hq", ITEMS_DDL + ";" + SALES_DDL + `; INSERT INTO items SELECT g, 'sku-'||g, g%1000, g/100.0, md5(g::text), now() FROM generate_series(1, ${N}) g`, ["items", "sales"], { initialUpload: true });
const b = await c.addBranch("init", "shop", ITEMS_DDL + ";" + SALES_DDL, ["items", "sales"]);
let peak = 0;
const t = setInterval(() => { peak = Math.max(peak, process.memoryUsage().rss); }, 100);
const t0 = Date.now();
await a.start(); await b.start();
const waits: number[] = [];
let done = false;
const till = (async () => {
  while (!done) {
    const s = performance.now();
    await b.db.pool.query("INSERT INTO sales DEFAULT VALUES");
    waits.push(performance.now() - s);
    await new Promise((r) => setTimeout(r, 50));
  }
})();
try {
  await waitFor("all rows", async () => (await b.db.pool.query("SELECT count(*)::int n FROM items")).rows[0].n === N, 600_000, 500);
  done = true;
  await till;
  waits.sort((x, y) => x - y);
  console.log(`${N} rows initial upload: ${(Date.now() - t0) / 1000} s, peak RSS of test process (hub+agents) ${(peak / 2 ** 20).toFixed(0)} MiB`);
  console.log(`till on the receiving branch: ${waits.length} one-row writes, p50 ${waits[waits.length >> 1].toFixed(1)} ms, max ${waits.at(-1)!.toFixed(0)} ms`);
} catch (e) { console.log(String(e)); }
clearInterval(t);
await c.close();
process.exit(0);
