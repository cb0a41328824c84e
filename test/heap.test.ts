import assert from "node:assert/strict";
import { applyHeapGrowth } from "../lib/heap.ts";
import { parseConfig } from "../lib/config.ts";
import { hubSpec } from "../hub/config.ts";
import { agentSpec } from "../agent/config.ts";

const agentEnv = { HUB_URL: "http://127.0.0.1:1", TENANT_ID: "t", BRANCH_ID: "b", API_KEY: "k", LOCAL_DATABASE_URL: "postgresql://x/y", TRACKED_TABLES: "items" };

describe("V8 heap growth of hub and agent processes", () => {
  it("is 300 % unless configured, for the hub and the agent; 0 hands it back to V8", () => {
    assert.equal(parseConfig(hubSpec, new Map(), {}).heapGrowingPercent, 300);
    assert.equal(parseConfig(agentSpec, new Map(), agentEnv).heapGrowingPercent, 300);
    assert.equal(parseConfig(hubSpec, new Map(), { HEAP_GROWING_PERCENT: "0" }).heapGrowingPercent, 0);
    assert.equal(parseConfig(agentSpec, new Map([["heap-growing-percent", "150"]]), agentEnv).heapGrowingPercent, 150);
  });

  it("sets V8's --heap-growing-percent flag to the configured value", () => {
    const set: string[] = [];
    assert.equal(applyHeapGrowth(300, (f) => set.push(f)), "--heap-growing-percent=300");
    applyHeapGrowth(0, (f) => set.push(f));
    assert.deepEqual(set, ["--heap-growing-percent=300", "--heap-growing-percent=0"]);
  });

  it("runs on with V8's own growth, saying so, where the runtime refuses the flag", () => {
    const warned: string[] = [];
    const applied = applyHeapGrowth(300, () => { throw new Error("flags are frozen"); }, (m) => warned.push(m));
    assert.equal(applied, null);
    assert.deepEqual(warned, ["could not set V8 --heap-growing-percent=300 (flags are frozen); running with V8's own heap growth"]);
  });
});
