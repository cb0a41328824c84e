import assert from "node:assert/strict";
import type pg from "pg";
import { makeSharedReader, AFTER_ALL_PARTS } from "../hub/stream/sharedReads.ts";
import type { LogEntry } from "../hub/store/log.ts";

/** A pool that answers every log read with nothing, and counts them. */
function countingPool() {
  const p = { queries: 0, async query() { p.queries++; return { rows: [] }; } };
  return p;
}

const entry = (seq: number, bytes = 10): LogEntry => ({
  seq: BigInt(seq), part: 0, lastPart: true, originBranch: "a", originTxn: BigInt(seq), nChanges: 1, conflicts: 0, body: Buffer.alloc(bytes),
});

describe("shared log reads", function () {
  it("serves entries this replica just committed from memory, a contiguous run at a time, then forgets them", async () => {
    const pool = countingPool();
    const r = makeSharedReader(pool as unknown as pg.Pool);
    r.committed("s", [entry(1), entry(2), entry(3)]);
    r.committed("s", [entry(5)]); // 4 came from elsewhere: not here
    assert.deepEqual((await r.read("s", 0n, AFTER_ALL_PARTS, 64)).map((e) => e.seq), [1n, 2n, 3n]);
    assert.deepEqual((await r.read("s", 1n, AFTER_ALL_PARTS, 1)).map((e) => e.seq), [2n]);
    assert.equal(pool.queries, 0);
    assert.deepEqual(await r.read("s", 3n, AFTER_ALL_PARTS, 64), [], "seq 4 is read from the log");
    assert.deepEqual(await r.read("other", 0n, AFTER_ALL_PARTS, 64), [], "another tenant's log");
    assert.deepEqual(await r.read("s", 2n, 0, 64), [], "the middle of an entry's parts is read from the log");
    assert.equal(pool.queries, 3);
    await new Promise((res) => setTimeout(res, 300));
    r.committed("t", [entry(1)]); // any tenant's append drops what expired
    assert.deepEqual(await r.read("s", 0n, AFTER_ALL_PARTS, 64), []);
    assert.equal(pool.queries, 4);
  });

  it("holds at most 16 MiB of remembered bodies", async () => {
    const pool = countingPool();
    const r = makeSharedReader(pool as unknown as pg.Pool);
    for (let i = 1; i <= 20; i++) r.committed("s", [entry(i, 1024 * 1024)]);
    const kept = await r.read("s", 4n, AFTER_ALL_PARTS, 64);
    assert.deepEqual(kept.map((e) => Number(e.seq)), Array.from({ length: 16 }, (_, i) => i + 5), "the newest 16 MiB");
    assert.deepEqual(await r.read("s", 3n, AFTER_ALL_PARTS, 64), [], "older ones were dropped");
  });
});
