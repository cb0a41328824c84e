import assert from "node:assert/strict";
import { resolve, concurrent, DEFAULT_POLICY, type Policy, type RowVersion, type IncomingChange } from "../hub/conflict/resolve.ts";
import { addDelta } from "../lib/decimal.ts";
import { splitJsonObject, joinJsonObject } from "../lib/jsonobject.ts";
import { hlcOf, hlcMs, nextHlc } from "../lib/hlc.ts";
import { makeClock } from "../agent/capture/clock.ts";

const v = (o: Partial<RowVersion>): RowVersion => ({ op: "U", seq: 10n, branch: "x", exact: true, hlc: hlcOf(1000), cols: null, ...o });
const inc = (o: Partial<IncomingChange>): IncomingChange => ({
  op: "U", row: '{"id": 1, "a": "ia", "b": "ib", "n": 5}', prev: "", branch: "y", hlc: hlcOf(2000), base: 0n, seq: 20n, ...o,
});
const EXISTING = '{"id": 1, "a": "ea", "b": "eb", "n": 10}';

describe("conflict rules (pure)", () => {
  it("calls changes concurrent exactly when the writer had not seen the row's version", () => {
    assert.equal(concurrent(undefined, inc({})), false, "a new row");
    assert.equal(concurrent(v({ seq: 10n }), inc({ base: 10n })), false, "seen: applied before writing");
    assert.equal(concurrent(v({ seq: 10n, branch: "y" }), inc({ base: 3n })), false, "its own earlier write");
    assert.equal(concurrent(v({ seq: 10n, branch: "y", exact: false }), inc({ base: 3n })), true, "a merge it has not seen");
    assert.equal(concurrent(v({ seq: 10n }), inc({ base: 9n })), true);
  });

  it("last-writer-wins compares HLCs, then branch ids; the loser keeps the existing row", () => {
    const later = resolve(DEFAULT_POLICY, v({}), EXISTING, inc({ hlc: hlcOf(2000) }));
    assert.equal(later.result, inc({}).row);
    assert.equal(later.conflict?.winner, "y");
    const earlier = resolve(DEFAULT_POLICY, v({ hlc: hlcOf(3000) }), EXISTING, inc({}));
    assert.equal(earlier.result, EXISTING);
    assert.deepEqual({ seq: earlier.state.seq, branch: earlier.state.branch, exact: earlier.state.exact, lost: earlier.state.lost },
      { seq: 10n, branch: "x", exact: true, lost: { y: "20" } }, "the existing version stands; only the loser has not seen it");
    const tie = resolve(DEFAULT_POLICY, v({ hlc: hlcOf(2000), branch: "z" }), EXISTING, inc({}));
    assert.equal(tie.conflict?.winner, "z", "equal clocks: larger branch id");
  });

  it("a loser's next change, made before it saw the kept row, adds its delta instead of overwriting the row", () => {
    // Branch y sold 2 (n 10 -> 8) while x's version (n 10) stood; y lost on
    // the clock (the row is kept at seq 20). y's till had skipped x's rows
    // while its sale was pending, so y's row is its own write; y sells 1
    // more (8 -> 7), based at 15, before it applied seq 20.
    const p: Policy = { strategy: "column-merge", branchPriority: [], deltaColumns: ["n"] };
    const kept = resolve(p, v({ hlc: hlcOf(3000), cols: {} }), EXISTING, inc({ prev: '{"a": ["ea0"]}', row: '{"id": 1, "a": "ya", "b": "eb", "n": 10}' }));
    assert.equal(kept.result, EXISTING);
    const next = resolve(p, kept.state, EXISTING, inc({ base: 15n, seq: 30n, hlc: hlcOf(4000), prev: '{"n": [8]}', row: '{"id": 1, "a": "ya", "b": "eb", "n": 7}' }));
    assert.equal(next.result, '{"id": 1, "a": "ea", "b": "eb", "n": 9}', "n = 10 + (7 - 8); a stays the kept value");
    assert.ok(next.conflict, "a concurrent change, on the record");
  });

  it("a kept row is concurrent only for its loser's changes based before the decision (no false conflicts for others)", () => {
    // x's version (seq 10) beats y's change at seq 20 and is kept.
    const p: Policy = { strategy: "column-merge", branchPriority: [], deltaColumns: ["n"] };
    const kept = resolve(p, v({ hlc: hlcOf(3000), cols: {} }), EXISTING, inc({ base: 5n, prev: '{"a": ["ea0"]}', row: '{"id": 1, "a": "ya", "b": "eb", "n": 10}' })).state;
    const edit = (o: Partial<IncomingChange>) => inc({ seq: 30n, hlc: hlcOf(4000), prev: '{"b": ["eb"]}', row: '{"id": 1, "a": "ea", "b": "zb", "n": 10}', ...o });
    // z had applied seq 10 and edits after it: sequential, whatever the decision at 20 said about y.
    assert.equal(concurrent(kept, edit({ branch: "z", base: 15n })), false, "a third branch that saw the kept version");
    const z = resolve(p, kept, EXISTING, edit({ branch: "z", base: 15n }));
    assert.equal(z.conflict, null);
    assert.deepEqual({ seq: z.state.seq, branch: z.state.branch, exact: z.state.exact, lost: z.state.lost ?? null }, { seq: 30n, branch: "z", exact: true, lost: null },
      "a new version forgets the losers: their changes based before it are concurrent by its seq");
    assert.equal(concurrent(kept, edit({ branch: "x", base: 3n })), false, "the winner's own row is still exactly its write");
    assert.equal(concurrent(kept, edit({ branch: "y", base: 15n })), true, "the loser, before it applied the decision");
    assert.equal(concurrent(kept, edit({ branch: "y", base: 20n })), false, "the loser, once it applied the decision");
    // A second loss keeps both losers.
    const twice = resolve(p, kept, EXISTING, inc({ branch: "w", base: 5n, seq: 25n, hlc: hlcOf(1000), prev: '{"a": ["ea0"]}', row: '{"id": 1, "a": "wa", "b": "eb", "n": 10}' })).state;
    assert.deepEqual(twice.lost, { y: "20", w: "25" });
    assert.equal(twice.seq, 10n);
  });

  it("branch priority beats the clock; unlisted branches rank last", () => {
    const p: Policy = { strategy: "branch-priority", branchPriority: ["hq"], deltaColumns: [] };
    assert.equal(resolve(p, v({ branch: "hq" }), EXISTING, inc({})).result, EXISTING);
    assert.equal(resolve(p, v({}), EXISTING, inc({ branch: "hq", hlc: 1n })).conflict?.winner, "hq");
  });

  it("column-merge keeps both sides' columns and decides a shared column by its own version", () => {
    const p: Policy = { strategy: "column-merge", branchPriority: [], deltaColumns: [] };
    const r = resolve(p, v({}), EXISTING, inc({ prev: '{"a": ["ea"]}', row: '{"id": 1, "a": "ia", "b": "eb-old", "n": 10}' }));
    assert.equal(r.result, '{"id": 1, "a": "ia", "b": "eb", "n": 10}');
    assert.equal(r.conflict?.winner, "");
    assert.equal(r.state.exact, false);
    // Column b was last written at seq 5, which the writer had seen: it takes b without a contest.
    const cols = { b: ["5", hlcOf(9000).toString(), "x"] as [string, string, string] };
    const r2 = resolve(p, v({ cols, hlc: hlcOf(9000) }), EXISTING, inc({ base: 6n, prev: '{"b": ["eb"]}' }));
    assert.equal(splitJsonObject(r2.result!).get("b"), '"ib"');
  });

  it("adds up counters exactly, under any strategy but manual", () => {
    const p: Policy = { ...DEFAULT_POLICY, deltaColumns: ["n"] };
    const r = resolve(p, v({ hlc: hlcOf(9000) }), EXISTING, inc({ prev: '{"n": [11]}', row: '{"id": 1, "a": "ea", "b": "eb", "n": 5}' }));
    assert.equal(splitJsonObject(r.result!).get("n"), "4", "10 + (5 - 11)");
    const manual = resolve({ ...p, strategy: "manual" }, v({}), EXISTING, inc({ prev: '{"n": [11]}' }));
    assert.equal(manual.result, EXISTING);
    assert.equal(manual.conflict?.status, "open");
  });

  it("lets two deletes agree without a conflict; a delete against an update is a conflict", () => {
    assert.equal(resolve(DEFAULT_POLICY, v({ op: "D" }), null, inc({ op: "D" })).conflict, null);
    const r = resolve(DEFAULT_POLICY, v({ op: "D" }), null, inc({}));
    assert.equal(r.conflict?.kind, "delete/update");
    assert.equal(r.result, inc({}).row, "the later update brings the row back");
  });

  it("does decimal counter arithmetic without rounding", () => {
    assert.equal(addDelta("9007199254740993", "1", "0"), "9007199254740994");
    assert.equal(addDelta("10.50", "9.25", "10.00"), "9.75");
    assert.equal(addDelta("-0.01", "0", "0.99"), "-1.00");
    assert.equal(addDelta("NaN", "1", "0"), null);
  });

  it("splits and joins JSON objects without touching values", () => {
    const text = '{"a": "x\\"}, y", "n": 12345678901234567890.123, "o": {"k": [1, "]"]}, "z": null}';
    const m = splitJsonObject(text);
    assert.deepEqual([...m.keys()], ["a", "n", "o", "z"]);
    assert.equal(m.get("n"), "12345678901234567890.123");
    assert.equal(joinJsonObject(m), text);
    assert.throws(() => splitJsonObject('{"a": 1'));
  });
});

describe("hybrid logical clock", () => {
  it("stays above the wall clock and above everything seen", () => {
    assert.equal(hlcMs(nextHlc(0n, 5000)), 5000);
    const ahead = hlcOf(10_000, 7n);
    assert.equal(nextHlc(ahead, 5000), ahead + 1n);
    assert.equal(hlcMs(nextHlc(hlcOf(10_000, 0xffffn), 5000)), 10_001);
    const clock = makeClock(0);
    const seen = hlcOf(Date.now() + 600_000);
    // A change made after seeing a fast branch's change orders after it.
    assert.ok(clock.stamp(Date.now(), seen) > seen);
    const t = Date.now();
    const x = clock.stamp(t, 0n);
    assert.ok(clock.stamp(t, 0n) > x, "monotonic");
  });
});
