/**
 * CPU time of PostgreSQL backends per database, read from /proc (Linux):
 * process CPU of the hub and agents alone hides where most of a sync
 * costs, in the statements they run. A backend that exits between two
 * readings takes its time with it, so pools in a phase must stay connected
 * (pg.Pool keeps idle clients for 10 s).
 */
import fs from "node:fs";
import type { Pair } from "./pair.ts";

const TICKS_PER_S = 100;

/** CPU seconds so far of the backends connected to each of `dbNames` (missing where /proc cannot tell). */
export function pgCpuSeconds(dbNames: string[]): Record<string, number> {
  return pgBackendSums(dbNames, (f) => (Number(f[11]) + Number(f[12])) / TICKS_PER_S);
}

/** Page faults so far (minor + major) of the backends connected to each of `dbNames`. */
export function pgFaults(dbNames: string[]): Record<string, number> {
  return pgBackendSums(dbNames, (f) => Number(f[7]) + Number(f[9]));
}

/** Sums `field` of /proc/<pid>/stat (fields after the command name) over each database's backends. */
function pgBackendSums(dbNames: string[], field: (f: string[]) => number): Record<string, number> {
  const out: Record<string, number> = Object.fromEntries(dbNames.map((d) => [d, 0]));
  let pids: string[];
  try { pids = fs.readdirSync("/proc").filter((p) => /^\d+$/.test(p)); } catch { return {}; }
  for (const pid of pids) {
    let cmd: string;
    let stat: string;
    try {
      cmd = fs.readFileSync(`/proc/${pid}/cmdline`, "utf8");
      if (!cmd.startsWith("postgres: ")) continue;
      stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
    } catch { continue; }
    // "postgres: 15/main: user db host(port) state"
    const db = cmd.replace(/\0/g, " ").split(" ")[3];
    if (!(db in out)) continue;
    out[db] += field(stat.slice(stat.lastIndexOf(")") + 2).split(" "));
  }
  return out;
}

export interface PairCpu { hub: number; a: number; b: number; hubPg: number; aPg: number; bPg: number }

/** CPU seconds so far of a pair's hub and agents, and of the backends of each of its three databases. */
export function pairCpu(p: Pair): PairCpu {
  const hubDb = new URL(p.hub.dbUrl).pathname.slice(1);
  const pgs = pgCpuSeconds([hubDb, p.a.name, p.b.name]);
  return { hub: p.hub.proc.cpuSeconds() ?? 0, a: p.agentA.cpuSeconds() ?? 0, b: p.agentB?.cpuSeconds() ?? 0,
    hubPg: pgs[hubDb] ?? 0, aPg: pgs[p.a.name] ?? 0, bPg: pgs[p.b.name] ?? 0 };
}

/** Page faults so far of a pair's hub, agents and database backends, keyed like PairCpu. */
export function pairFaults(p: Pair): PairCpu {
  const hubDb = new URL(p.hub.dbUrl).pathname.slice(1);
  const pgs = pgFaults([hubDb, p.a.name, p.b.name]);
  return { hub: p.hub.proc.faults() ?? 0, a: p.agentA.faults() ?? 0, b: p.agentB?.faults() ?? 0,
    hubPg: pgs[hubDb] ?? 0, aPg: pgs[p.a.name] ?? 0, bPg: pgs[p.b.name] ?? 0 };
}

export function cpuDelta(c0: PairCpu, c1: PairCpu) {
  return { hub: c1.hub - c0.hub, agentA: c1.a - c0.a, agentB: c1.b - c0.b, hubPg: c1.hubPg - c0.hubPg, aPg: c1.aPg - c0.aPg, bPg: c1.bPg - c0.bPg };
}
