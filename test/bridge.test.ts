import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { startBridge, type Bridge } from "../hub/bridge/redis.ts";
import { makeFeed } from "../hub/stream/feed.ts";
import { quiet } from "./support/cluster.ts";

const REDIS = "redis://127.0.0.1:6379";

async function until(what: string, ok: () => boolean, ms = 5000) {
  const end = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe("the Redis bridge between hub replicas", function () {
  this.timeout(20_000);
  const bridges: Bridge[] = [];
  afterEach(async () => { for (const b of bridges.splice(0)) await b.close(); });

  it("publishes nothing while a replica is alone, and at once when another comes up", async () => {
    // A prefix of its own: no other hub on this Redis counts as a replica here.
    // The recheck is long, so only the announcement can end the quiet.
    const options = { prefix: `bstest-${randomUUID()}:`, aloneRecheckMs: 60_000 };
    const f1 = makeFeed(null, 1000);
    const b1 = startBridge(REDIS, f1, quiet, options);
    bridges.push(b1);
    await b1.ready;
    await b1.publish("t", 1n);
    assert.equal(b1.info().alone, true, "the first publish reached only the replica itself");
    for (let seq = 2n; seq <= 20n; seq++) await b1.publish("t", seq);
    assert.deepEqual({ published: b1.info().published, skipped: b1.info().skipped }, { published: 1, skipped: 19 });

    const f2 = makeFeed(null, 1000);
    const b2 = startBridge(REDIS, f2, quiet, options);
    bridges.push(b2);
    await b2.ready;
    await until("replica 1 to hear replica 2 come up", () => !b1.info().alone);
    await b1.publish("t", 21n);
    await until("replica 2's feed to learn head 21", () => f2.known("t") === 21n);
    assert.equal(b1.info().alone, false, "two replicas listen now");
    await b2.publish("t", 22n);
    await until("replica 1's feed to learn head 22", () => f1.known("t") === 22n);
  });
});
