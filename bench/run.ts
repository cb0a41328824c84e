/**
 * `npm run bench`: runs the selected sections against real hub and agent
 * processes, prints a table per section with the command that reproduces
 * it, and writes bench/results/<timestamp>.json. `--quick` uses tiny sizes
 * and only checks that everything ran and the data matched (exit 1 if not).
 */
import fs from "node:fs";
import { execFileSync } from "node:child_process";
import os from "node:os";
import path from "node:path";
import { parseArgs, type SectionName } from "./lib/args.ts";
import { installSignalHandlers, runCleanup } from "./lib/cleanup.ts";
import { mainServer, privateCluster, checkpointServer } from "./lib/pg.ts";
import { childRng } from "../lib/rng.ts";
import { formatSection } from "./lib/report.ts";
import { summarizeProfiles } from "./lib/cpuprofile.ts";
import { REPO } from "./lib/procs.ts";
import { STATEMENTS_CONF, formatStatements, resetStatements, topStatements } from "./lib/pgstatements.ts";
import { startWaitSampler, formatWaits, type WaitSampler } from "./lib/pgwaits.ts";
import type { BenchContext, SectionResult } from "./lib/context.ts";
import { throughput } from "./sections/throughput.ts";
import { latency } from "./sections/latency.ts";
import { fanout } from "./sections/fanout.ts";
import { streams } from "./sections/streams.ts";
import { ingest } from "./sections/ingest.ts";
import { stall } from "./sections/stall.ts";
import { backlog } from "./sections/backlog.ts";

/** The code being measured: commit, plus "+dirty" when hub/agent/lib/cli have uncommitted changes. */
function codeVersion(): string {
  try {
    const head = execFileSync("git", ["rev-parse", "--short", "HEAD"], { cwd: REPO, encoding: "utf8" }).trim();
    const dirty = execFileSync("git", ["status", "--porcelain", "--", "hub", "agent", "lib", "cli", "gen", "proto"], { cwd: REPO, encoding: "utf8" }).trim();
    return dirty ? `${head}+dirty` : head;
  } catch { return "unknown"; }
}

const SECTION_FNS: Record<SectionName, (ctx: BenchContext) => Promise<SectionResult>> = { throughput, latency, fanout, streams, ingest, stall, backlog };

async function main(): Promise<number> {
  let args;
  try { args = parseArgs(process.argv.slice(2)); } catch (e) { console.error((e as Error).message); return 2; }
  installSignalHandlers();
  // Hub and agents run the bundle, as `npm start` does (bin/branchsync.mjs
  // would fall back to the slower-starting tsx if it were stale).
  execFileSync(process.execPath, [path.join(REPO, "scripts/build.mjs")], { stdio: "inherit" });
  const started = new Date();
  const stamp = started.toISOString().replace(/[-:]/g, "").replace(/\..*/, "").replace("T", "-");
  const tag = (Date.now() % 2 ** 31).toString(36) + process.pid.toString(36);
  const logDir = path.join(os.tmpdir(), `bsbench-${stamp}-${tag}`);
  fs.mkdirSync(logDir, { recursive: true });
  const t0 = Date.now();
  const log = (m: string) => console.error(`[${((Date.now() - t0) / 1000).toFixed(1).padStart(6)}s] ${m}`);
  const code = codeVersion();
  log(`seed ${args.seed}${args.quick ? " (quick)" : ""}; code ${code}; sections ${args.only.join(",")}; logs in ${logDir}`);
  const results: SectionResult[] = [];
  let server;
  try {
    server = args.pg === "private" ? await privateCluster(tag, 500, args.pgStatements ? STATEMENTS_CONF : []) : await mainServer();
    log(`PostgreSQL: ${server.describe}`);
    const ctx: BenchContext = {
      seed: args.seed, quick: args.quick, tag, server, logDir,
      cpuProfDir: args.cpuProf ? path.join(logDir, "profiles") : undefined,
      redisUrl: process.env.BENCH_REDIS_URL ?? "redis://127.0.0.1:6379",
      hubEnv: args.hubEnv, agentEnv: args.agentEnv, sizes: args.sizes,
      rng: (name) => childRng(args.seed, name),
      command: (section) => ["npm run bench --", ...(args.quick ? ["--quick"] : []), "--only", section, "--seed", String(args.seed), ...args.repro].join(" "),
      log,
    };
    for (const name of args.only) {
      const ts = Date.now();
      const tc = Date.now();
      await checkpointServer(server);
      log(`== ${name} (after a CHECKPOINT of ${((Date.now() - tc) / 1000).toFixed(1)} s)`);
      let r: SectionResult;
      let waits: WaitSampler | null = null;
      try {
        if (args.pgStatements) await resetStatements(server);
        if (args.pgWaits) waits = await startWaitSampler(server);
        r = await SECTION_FNS[name](ctx);
        if (waits) {
          const w = await waits.stop();
          r.data.pgWaits = w;
          console.log(formatWaits(name, w));
        }
        if (args.pgStatements) {
          const top = await topStatements(server);
          r.data.pgStatements = top;
          console.log(formatStatements(name, top));
        }
      } catch (e) {
        await waits?.stop().catch((err) => log(`pg-waits sampler: ${(err as Error).message}`));
        r = { section: name, command: ctx.command(name), ok: false, tables: [], data: {}, errors: [(e as Error).stack ?? String(e)] };
      }
      r.data.elapsedS = (Date.now() - ts) / 1000;
      results.push(r);
      console.log(formatSection(r));
    }
  } finally {
    await runCleanup();
  }
  const elapsed = (Date.now() - t0) / 1000;
  const profiles = args.cpuProf ? summarizeProfiles(path.join(logDir, "profiles"), REPO) : null;
  if (profiles) console.log(`\n## CPU profiles (self time, top functions per process)\n${profiles.text}`);
  const out = path.join(REPO, "bench/results", `${stamp}.json`);
  fs.writeFileSync(out, JSON.stringify({
    started: started.toISOString(), elapsedS: elapsed, code, seed: args.seed, quick: args.quick, argv: process.argv.slice(2),
    machine: { node: process.version, cpus: os.cpus().length, memGiB: Math.round(os.totalmem() / 2 ** 30), pg: server?.describe },
    sizes: args.sizes, hubEnv: args.hubEnv, agentEnv: args.agentEnv, logDir,
    sections: results, profiles: profiles?.data ?? null,
  }, (_k, v) => (typeof v === "bigint" ? v.toString() : v), 2));
  const failed = results.filter((r) => !r.ok);
  console.log(`\ncode ${code}, seed ${args.seed}: ${results.length - failed.length}/${results.length} sections OK in ${elapsed.toFixed(1)} s; results in ${path.relative(process.cwd(), out)}; logs in ${logDir}`);
  if (args.quick && elapsed > 60) console.log(`WARNING: --quick took ${elapsed.toFixed(1)} s (budget 60 s)`);
  return failed.length === 0 ? 0 : 1;
}

main().then((code) => process.exit(code), async (e) => {
  console.error(e);
  await runCleanup();
  process.exit(1);
});
