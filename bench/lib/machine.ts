/**
 * What the machine itself does to a latency measurement, reported beside it
 * so that a tail the platform causes is not read as ours:
 * - a control probe, `SELECT 1` on its own connection every few ms while the
 *   load runs (nothing of branchsync on its path but the shared CPUs);
 * - the kernel's DAMON monitor: on this VM kind a kdamond sampling physical
 *   memory for proactive reclaim took a CPU for ~20 ms every ~0.55 s (2026-11-23),
 *   which showed as the same rhythm in every process's delays (perf record -a:
 *   kdamond's samples peak at that period; our latency p99 36–46 ms with it,
 *   23.6 ms with it paused).
 */
import fs from "node:fs";
import path from "node:path";
import pg from "pg";
import { summarize, sleep, type Summary } from "./stats.ts";
import { readCpuSeconds } from "./procs.ts";

export interface ControlProbe { stop(): Promise<Summary> }

/** Round trips of `SELECT 1` every `everyMs` until stop(). */
export async function startControlProbe(url: string, everyMs = 10): Promise<ControlProbe> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  const rtts: number[] = [];
  let stopping = false;
  const loop = (async () => {
    while (!stopping) {
      const t0 = performance.now();
      await c.query("SELECT 1");
      rtts.push(performance.now() - t0);
      await sleep(everyMs);
    }
  })();
  let stopped: Promise<Summary> | null = null;
  return {
    /** Idempotent: the section's cleanup calls it again after a failure. */
    stop() {
      stopping = true;
      stopped ??= loop.finally(() => c.end()).then(() => summarize(rtts));
      return stopped;
    },
  };
}

const DAMON = "/sys/kernel/mm/damon/admin/kdamonds";

const readOr = (p: string): string | null => { try { return fs.readFileSync(p, "utf8").trim(); } catch { return null; } };

/** Running kdamonds, as "paddr, sampling every 500 ms, schemes: pageout"; [] if none or not visible. */
export function damonMonitors(): string[] {
  const out: string[] = [];
  let ids: string[];
  try { ids = fs.readdirSync(DAMON).filter((d) => /^\d+$/.test(d)); } catch { return out; }
  for (const id of ids) {
    if (readOr(path.join(DAMON, id, "state")) !== "on") continue;
    const ctx = path.join(DAMON, id, "contexts", "0");
    const sampleUs = Number(readOr(path.join(ctx, "monitoring_attrs", "intervals", "sample_us")));
    let actions: string[] = [];
    try {
      actions = fs.readdirSync(path.join(ctx, "schemes")).filter((d) => /^\d+$/.test(d))
        .map((d) => readOr(path.join(ctx, "schemes", d, "action")) ?? "?");
    } catch { actions = []; }
    out.push(`${readOr(path.join(ctx, "operations")) ?? "?"}, sampling every ${Number.isFinite(sampleUs) ? sampleUs / 1000 : "?"} ms` +
      `${actions.length ? `, schemes: ${actions.join(", ")}` : ""}`);
  }
  return out;
}

/**
 * CPU seconds the running kdamonds have used (utime + stime of each one's
 * pid), or null if none is visible. A section reads it before and after its
 * probes: in fan-out to 50 one took 11–14 % of a core while it probed, and
 * its p99 was 53 ms with DAMON paused against 81–698 ms (about 185 typically) with it on.
 */
export function kdamondCpuSeconds(): number | null {
  let ids: string[];
  try { ids = fs.readdirSync(DAMON).filter((d) => /^\d+$/.test(d)); } catch { return null; }
  let total: number | null = null;
  for (const id of ids) {
    const pid = readOr(path.join(DAMON, id, "pid"));
    const cpu = pid && Number(pid) > 0 ? readCpuSeconds(pid) : null;
    if (cpu !== null) total = (total ?? 0) + cpu;
  }
  return total;
}
