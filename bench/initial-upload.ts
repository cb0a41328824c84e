/**
 * Times an initial upload (INITIAL_UPLOAD=true: a branch's existing rows
 * as one transaction) of N rows to a second branch, with the test
 * cluster (hub and both agents in this process) and reports its peak RSS:
 * `node --import tsx bench/initial-upload.ts [rows]`.
 */
import { startCluster, ITEMS_DDL } from "../test/support/cluster.ts";
import { waitFor } from "../test/support/db.ts";
const N = Number(process.argv[2] ?? 200000);
const c = await startCluster();
await c.addTenant("init");
const a = await c.addBranch("init", "hq", ITEMS_DDL + `; INSERT INTO items SELECT g, 'sku-'||g, g%1000, g/100.0, md5(g::text), now() FROM generate_series(1, ${N}) g`, ["items"], { initialUpload: true });
const b = await c.addBranch("init", "shop", ITEMS_DDL, ["items"]);
let peak = 0;
const t = setInterval(() => { peak = Math.max(peak, process.memoryUsage().rss); }, 100);
const t0 = Date.now();
await a.start(); await b.start();
try {
  await waitFor("all rows", async () => (await b.db.pool.query("SELECT count(*)::int n FROM items")).rows[0].n === N, 600_000, 500);
  console.log(`${N} rows initial upload: ${(Date.now() - t0) / 1000} s, peak RSS of test process (hub+agents) ${(peak / 2 ** 20).toFixed(0)} MiB`);
} catch (e) { console.log(String(e)); }
clearInterval(t);
await c.close();
process.exit(0);
