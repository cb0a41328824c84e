import assert from "node:assert/strict";
import { makeFeed } from "../hub/stream/feed.ts";

describe("the head feed", () => {
  it("wakes waiters when the head passes them, on abort, and on their own timeout", async () => {
    const feed = makeFeed(null, 1000);
    try {
      const woken = feed.wait("t", 5n);
      feed.advance("t", 5n);
      feed.advance("t", 6n);
      await woken;
      assert.equal(await Promise.race([feed.wait("t", 6n).then(() => "woke"), new Promise((r) => setTimeout(() => r("still waiting"), 50))]), "still waiting");
      const ac = new AbortController();
      const aborted = feed.wait("t", 6n, ac.signal);
      ac.abort();
      await aborted;
      // The own-only cursor move of a session relies on this one firing with
      // nothing else happening in the tenant.
      const t0 = Date.now();
      await feed.wait("t", 6n, new AbortController().signal, 80);
      assert.ok(Date.now() - t0 >= 70);
      assert.equal(feed.known("t"), 6n);
    } finally {
      feed.close();
    }
  });

  it("polls the heads of waiting tenants when asked, and again if asked while a poll was reading", async () => {
    let head = 1n;
    const reads: bigint[] = [];
    let release: () => void = () => undefined;
    // Each read answers the head as it was when the read began, once released.
    const feed = makeFeed(async () => { const h = head; reads.push(h); await new Promise<void>((r) => { release = r; }); return h; }, 60_000);
    try {
      // (It also gives up after 2 s, so a feed that never polls again fails here fast.)
      const waiting = feed.wait("t", 1n, undefined, 2000);
      feed.pollNow();
      await new Promise((r) => setImmediate(r));
      head = 2n;
      // Asked while the first read is out: its answer (1) predates head 2.
      feed.pollNow();
      release();
      await new Promise((r) => setImmediate(r));
      release();
      await waiting;
      assert.deepEqual(reads, [1n, 2n], "one poll at a time, and one more after it");
      assert.equal(feed.known("t"), 2n);
    } finally {
      feed.close();
    }
  });
});
