/**
 * How much the V8 old generation may grow past what the last full GC kept
 * before the next one. Hub and agent keep a small heap (about 20 MB and
 * 12 MB) but pass every change through Buffers (gRPC frames, the log
 * bodies, the parameters pg writes), which V8 counts against the same
 * budget. With V8's own growth (about 2.3x here) a hub under a stream of
 * updates ran a full GC every 70-300 ms, 20-37 of them in the bench's
 * throughput section and about a third of the hub's CPU in the update
 * phase (perf: marking and sweeping threads); at 300 % it ran 1-3, and
 * the branch's agent 2 instead of 11. What it costs is headroom: the heap
 * may hold up to four times what is live before collecting (the hub with
 * 10,000 idle streams stayed at 315 MiB RSS).
 */
import v8 from "node:v8";
import { int } from "./config.ts";

export const heapGrowingPercent = int(
  "V8 old-generation headroom after a full GC, in % of what it kept (0: V8's own, about 130 %)",
  "HEAP_GROWING_PERCENT", "heap-growing-percent", 300, 0, 1000);

/**
 * Sets it for this process. V8 reads it whenever a full GC sets the next
 * limit, so it holds from the first one on; 0 gives V8 its own choice back.
 * A runtime that refuses flags after start costs GC time, not correctness:
 * the process runs on with V8's own growth and says so.
 */
export function applyHeapGrowth(percent: number, set: (flags: string) => void = v8.setFlagsFromString,
  warn: (msg: string) => void = (m) => console.warn(m)): string | null {
  const flag = `--heap-growing-percent=${percent}`;
  try {
    set(flag);
    return flag;
  } catch (e) {
    warn(`could not set V8 ${flag} (${(e as Error).message}); running with V8's own heap growth`);
    return null;
  }
}
