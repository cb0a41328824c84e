/** What every section gets from bench/run.ts. */
import type { PgServer } from "./pg.ts";
import type { Rng } from "../../lib/rng.ts";

export interface BenchContext {
  seed: number;
  quick: boolean;
  /** Unique per run, used in database, tenant and cluster names. */
  tag: string;
  server: PgServer;
  logDir: string;
  cpuProfDir?: string;
  redisUrl: string;
  /** Extra env for every hub / agent process (--hub-env / --agent-env). */
  hubEnv: Record<string, string>;
  agentEnv: Record<string, string>;
  /** Sizes, after --quick and explicit overrides. */
  sizes: Sizes;
  rng(name: string): Rng;
  /** `npm run bench -- …` that reproduces a section. */
  command(section: string): string;
  log(msg: string): void;
}

export interface Sizes {
  baseRows: number;
  inserts: number;
  updates: number;
  deletes: number;
  batch: number;
  warmupRows: number;
  latencySeconds: number;
  latencyRate: number;
  latencyIntervalMs: number;
  fanoutBranches: number;
  fanoutProbes: number;
  streamLevels: number[];
  streamsPerConn: number;
  streamBranches: number;
  streamPings: number;
  ingestBranches: number;
  ingestTenants: number[];
  ingestSeconds: number;
  ingestTxnsPerBatch: number;
  ingestChangesPerTxn: number;
  /** Local transactions an offline branch commits, per run of the backlog section. */
  backlogTxns: number[];
  backlogRows: number;
  /** Batches a pusher keeps awaiting BatchAck (the agent's UPSTREAM_WINDOW). */
  ingestWindow: number;
  /** Rows the writer adds in the stall section's first phase; the second adds twice as many. */
  stallRows: number;
}

export interface SectionResult {
  section: string;
  command: string;
  ok: boolean;
  /** Human table: header + rows. */
  tables: { title: string; header: string[]; rows: (string | number)[][]; notes: string[] }[];
  data: Record<string, unknown>;
  errors: string[];
}
