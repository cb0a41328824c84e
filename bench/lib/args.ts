/** Command line of `npm run bench`: sections, seed, sizes (--quick and per-size overrides), extra env. */
import type { Sizes } from "./context.ts";

export const SECTIONS = ["throughput", "latency", "fanout", "streams", "ingest", "stall", "backlog"] as const;
export type SectionName = (typeof SECTIONS)[number];

export const FULL: Sizes = {
  baseRows: 100_000, inserts: 100_000, updates: 20_000, deletes: 10_000, batch: 100, warmupRows: 20_000,
  latencySeconds: 30, latencyRate: 500, latencyIntervalMs: 20,
  fanoutBranches: 50, fanoutProbes: 200,
  streamLevels: [1_000, 10_000, 20_000], streamsPerConn: 100, streamBranches: 100, streamPings: 2_000,
  ingestBranches: 100, ingestTenants: [1, 100], ingestSeconds: 10, ingestTxnsPerBatch: 5, ingestChangesPerTxn: 100, ingestWindow: 2,
  stallRows: 100_000,
  backlogTxns: [5_000, 20_000], backlogRows: 10,
};

export const QUICK: Sizes = {
  ...FULL,
  baseRows: 2_000, inserts: 2_000, updates: 400, deletes: 200, warmupRows: 200,
  latencySeconds: 2, fanoutBranches: 5, fanoutProbes: 10,
  streamLevels: [200], streamBranches: 10, streamPings: 200,
  ingestBranches: 10, ingestTenants: [1], ingestSeconds: 2,
  stallRows: 2_000,
  backlogTxns: [100, 200],
};

export interface Args {
  quick: boolean;
  only: SectionName[];
  seed: number;
  pg: "main" | "private";
  cpuProf: boolean;
  /** pg_stat_statements in the private cluster, top statements printed per section. */
  pgStatements: boolean;
  /** pg_stat_activity sampled during each section: CPU or which wait (bench/lib/pgwaits.ts). */
  pgWaits: boolean;
  keepLogs: boolean;
  hubEnv: Record<string, string>;
  agentEnv: Record<string, string>;
  sizes: Sizes;
  /** The flags that change what is measured, to print in reproduce commands. */
  repro: string[];
}

const kebab = (k: string) => k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);

export const USAGE = `npm run bench -- [--quick] [--only ${SECTIONS.join(",")}] [--seed N] [--pg main|private]
                [--cpu-prof] [--pg-statements] [--pg-waits] [--agent-env K=V]... [--hub-env K=V]... [--<size> N[,N...]]...
sizes (full / --quick): ${Object.keys(FULL).map(kebab).join(", ")}`;

export function parseArgs(argv: string[]): Args {
  const a: Args = {
    quick: false, only: [...SECTIONS], seed: Math.floor(Math.random() * 2 ** 31), pg: "main", cpuProf: false, pgStatements: false, pgWaits: false, keepLogs: false,
    hubEnv: {}, agentEnv: {}, sizes: { ...FULL }, repro: [],
  };
  const overrides: [keyof Sizes, string][] = [];
  const byFlag = new Map(Object.keys(FULL).map((k) => [kebab(k), k as keyof Sizes]));
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const [flag, inline] = arg.includes("=") && arg.startsWith("--") ? [arg.slice(0, arg.indexOf("=")), arg.slice(arg.indexOf("=") + 1)] : [arg, undefined];
    const value = () => { const v = inline ?? argv[++i]; if (v === undefined) throw new Error(`${flag} needs a value\n${USAGE}`); return v; };
    const env = (into: Record<string, string>, v: string) => {
      const eq = v.indexOf("=");
      if (eq <= 0) throw new Error(`${flag} wants KEY=VALUE, got "${v}"`);
      into[v.slice(0, eq)] = v.slice(eq + 1);
      a.repro.push(flag, v);
    };
    switch (flag) {
      case "--quick": a.quick = true; break;
      case "--only": {
        const names = value().split(",").map((x) => x.trim()).filter(Boolean);
        for (const n of names) if (!(SECTIONS as readonly string[]).includes(n)) throw new Error(`unknown section "${n}"\n${USAGE}`);
        a.only = SECTIONS.filter((x) => names.includes(x));
        break;
      }
      case "--seed": a.seed = Number(value()); if (!Number.isInteger(a.seed)) throw new Error("--seed wants an integer"); break;
      case "--pg": { const v = value(); if (v !== "main" && v !== "private") throw new Error("--pg is main or private"); a.pg = v; a.repro.push("--pg", v); break; }
      case "--cpu-prof": a.cpuProf = true; break;
      // Needs a cluster of our own to preload the extension in.
      case "--pg-statements": a.pgStatements = true; a.pg = "private"; break;
      case "--pg-waits": a.pgWaits = true; break;
      case "--agent-env": env(a.agentEnv, value()); break;
      case "--hub-env": env(a.hubEnv, value()); break;
      case "--help": case "-h": throw new Error(USAGE);
      default: {
        const key = flag.startsWith("--") ? byFlag.get(flag.slice(2)) : undefined;
        if (!key) throw new Error(`unknown argument "${arg}"\n${USAGE}`);
        overrides.push([key, value()]);
      }
    }
  }
  a.sizes = { ...(a.quick ? QUICK : FULL) };
  for (const [k, v] of overrides) {
    const nums = v.split(",").map(Number);
    if (nums.some((n) => !Number.isFinite(n) || n < 0)) throw new Error(`--${kebab(k)} wants non-negative numbers, got "${v}"`);
    (a.sizes as unknown as Record<string, number | number[]>)[k] = Array.isArray(FULL[k]) ? nums : nums[0];
    a.repro.push(`--${kebab(k)}`, v);
  }
  // The updates and deletes of W1 touch the rows its inserts wrote; more of
  // them would wait for rows that never change until the section times out.
  const { inserts, updates, deletes } = a.sizes;
  if (updates > inserts || deletes > inserts) throw new Error(`--updates (${updates}) and --deletes (${deletes}) may not exceed --inserts (${inserts})`);
  return a;
}
