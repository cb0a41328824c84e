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
});
