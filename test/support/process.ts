/** Agents and hub replicas as real child processes, for tests that kill -9 them. */
import { spawn, type ChildProcess } from "node:child_process";
import path from "node:path";
import type { AgentConfig } from "../../agent/main.ts";

const BIN = path.resolve(import.meta.dirname, "../../bin/branchsync.mjs");

export function spawnAgent(cfg: AgentConfig): ChildProcess {
  const env = {
    ...process.env,
    HUB_URL: cfg.hubUrl, HUB_AUTH_URL: cfg.authUrl, TENANT_ID: cfg.tenantId, BRANCH_ID: cfg.branchId,
    API_KEY: cfg.apiKey, LOCAL_DATABASE_URL: cfg.localDatabaseUrl, DATABASE_SCHEMA: cfg.databaseSchema,
    TRACKED_TABLES: cfg.trackedTables.join(","), BATCH_MAX_CHANGES: String(cfg.batchMaxChanges),
    BATCH_LINGER_MS: String(cfg.batchLingerMs), POLL_MS: String(cfg.pollMs), LOG_LEVEL: process.env.TEST_LOG_LEVEL ?? "warn",
  };
  const child = spawn(process.execPath, [BIN, "agent"], { env, stdio: ["ignore", "ignore", "inherit"] });
  return child;
}

export interface HubProcess { child: ChildProcess; ready: Promise<void> }

/**
 * A hub replica on fixed ports (a restarted replica must be where the agents
 * dial again). `ready` resolves once it prints that it serves, and rejects
 * if it exits first.
 */
export function spawnHub(databaseUrl: string, grpcPort: number, httpPort: number, adminToken: string, extraEnv: Record<string, string> = {}): HubProcess {
  const env = {
    ...process.env, ...extraEnv, DATABASE_URL: databaseUrl, REDIS_URL: process.env.TEST_REDIS_URL ?? "redis://127.0.0.1:6379", HOST: "127.0.0.1",
    GRPC_PORT: String(grpcPort), HTTP_PORT: String(httpPort), ADMIN_TOKEN: adminToken, DRAIN_SECONDS: "0", PG_POOL_SIZE: "10",
    LOG_LEVEL: process.env.TEST_LOG_LEVEL ?? "warn",
  };
  const child = spawn(process.execPath, [BIN, "hub"], { env, stdio: ["ignore", "pipe", "inherit"] });
  const ready = new Promise<void>((resolve, reject) => {
    let out = "";
    child.stdout!.on("data", (d: Buffer) => {
      out += d.toString();
      if (out.includes("branchsync hub ready")) resolve();
    });
    child.once("exit", (code, signal) => reject(new Error(`hub exited (${code ?? signal}) before it was ready: ${out.slice(-500)}`)));
  });
  ready.catch(() => undefined);
  return { child, ready };
}

export function kill9(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) { resolve(); return; }
    child.once("exit", () => resolve());
    child.kill("SIGKILL");
  });
}

export { makeRng as seeded } from "../../lib/rng.ts";

export function testSeed(): number {
  const s = process.env.TEST_SEED ? Number(process.env.TEST_SEED) : Math.floor(Math.random() * 2 ** 31);
  console.log(`      seed ${s} (rerun with TEST_SEED=${s})`);
  return s;
}
