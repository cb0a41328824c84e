/**
 * The one CLI: `branchsync hub|agent|migrate|admin ...`. All config is
 * parsed and validated here, before anything starts; bad config is one line
 * on stderr and exit code 2.
 */
import { ConfigError, parseConfig, splitArgs, helpText } from "../lib/config.ts";
import { hubSpec } from "../hub/config.ts";
import { agentSpec } from "../agent/config.ts";
import { applyHeapGrowth } from "../lib/heap.ts";
import { SchemaError } from "../agent/capture/introspect.ts";
import { BindingError } from "../agent/capture/install.ts";
import { ADMIN_USAGE } from "./usage.ts";
import { ensureAdminTokenFile } from "./adminToken.ts";
import { storageUnavailable, whereIs } from "../lib/pgerrors.ts";

// Each command imports only what it runs: the CLI starts in a fraction of
// the time, which operators and the tests both feel.

const USAGE = `branchsync — keeps branch PostgreSQL databases in sync through a hub

usage: branchsync <command> [flags]   (every flag also has an env var; see <command> --help)
  hub       run a hub replica (SyncStream data plane + Auth/Admin control plane)
  agent     run a branch agent next to a branch database
  migrate   create or upgrade the hub database schema, then exit
  admin     manage tenants and branches through a running hub
${ADMIN_USAGE}`;

function onSignals(stop: () => Promise<void>) {
  let stopping = false;
  const handler = () => {
    if (stopping) process.exit(130);
    stopping = true;
    stop().then(() => process.exit(0), (e) => { console.error(`branchsync: ${e.message}`); process.exit(1); });
  };
  process.on("SIGINT", handler);
  process.on("SIGTERM", handler);
}

/** A start-up failure to connect, worded so an operator knows which setting to look at (exit code 1: not bad config, maybe not up yet). */
function unreachable(e: unknown, what: string, setting: string, url: string): unknown {
  if (!storageUnavailable(e)) return e;
  return new Error(`cannot reach ${what} at ${whereIs(url)} (${setting}): ${(e as Error).message}; is PostgreSQL running and reachable there?`);
}

async function main(argv: string[]): Promise<void> {
  const [cmd, ...rest] = argv;
  const { flags, positional } = splitArgs(rest);
  switch (cmd) {
    case "hub": {
      if (flags.has("help")) { console.log(helpText("branchsync hub", hubSpec)); return; }
      const cfg = parseConfig(hubSpec, flags, process.env);
      applyHeapGrowth(cfg.heapGrowingPercent);
      if (!cfg.adminToken) {
        const { token, file } = ensureAdminTokenFile();
        cfg.adminToken = token;
        console.log(`admin token: in ${file} (set ADMIN_TOKEN to choose one)`);
      }
      const { startHub } = await import("../hub/main.ts");
      const hub = await startHub(cfg).catch((e) => { throw unreachable(e, "the hub database", "DATABASE_URL", cfg.databaseUrl); });
      const shown = cfg.host === "0.0.0.0" ? "127.0.0.1" : cfg.host;
      console.log(`branchsync hub ready: SyncStream grpc://${shown}:${hub.grpcPort}  control http://${shown}:${hub.httpPort} (Auth/Admin, /healthz, /metrics)`);
      onSignals(() => hub.close());
      return;
    }
    case "agent": {
      if (flags.has("help")) { console.log(helpText("branchsync agent", agentSpec)); return; }
      const cfg = parseConfig(agentSpec, flags, process.env);
      applyHeapGrowth(cfg.heapGrowingPercent);
      const { startAgent } = await import("../agent/main.ts");
      const agent = await startAgent(cfg).catch((e) => { throw unreachable(e, "the branch database", "LOCAL_DATABASE_URL", cfg.localDatabaseUrl); });
      console.log(`branchsync agent running for ${cfg.tenantId}/${cfg.branchId}, tables ${cfg.trackedTables.join(", ")}`);
      onSignals(() => agent.stop());
      return;
    }
    case "migrate": {
      const spec = { databaseUrl: hubSpec.databaseUrl };
      if (flags.has("help")) { console.log(helpText("branchsync migrate", spec)); return; }
      const cfg = parseConfig(spec, flags, process.env);
      const [{ default: pg }, { migrate }, { ensureDatabase }, { makeLogger }] = await Promise.all([
        import("pg"), import("../hub/store/migrate.ts"), import("../hub/store/database.ts"), import("../lib/log.ts")]);
      await ensureDatabase(cfg.databaseUrl, makeLogger("migrate"));
      const pool = new pg.Pool({ connectionString: cfg.databaseUrl, max: 1 });
      try {
        console.log(`hub schema at version ${await migrate(pool)}`);
      } finally {
        await pool.end();
      }
      return;
    }
    case "admin": {
      const { runAdmin } = await import("./admin.ts");
      await runAdmin(positional, flags, (s) => console.log(s));
      return;
    }
    case undefined:
    case "help":
    case "--help":
      console.log(USAGE);
      return;
    default:
      throw new ConfigError(`unknown command "${cmd}" (try --help)`);
  }
}

main(process.argv.slice(2)).catch((e) => {
  if (e instanceof ConfigError || e instanceof SchemaError || e instanceof BindingError) {
    console.error(`branchsync: ${e.message}`);
    process.exit(2);
  }
  console.error(`branchsync: ${e instanceof Error ? e.message : String(e)}`);
  process.exit(1);
});
