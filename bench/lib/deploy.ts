/**
 * A hub and branch agents as real processes (`node bin/branchsync.mjs
 * hub|agent`), with tenants and branches created through the hub's Connect
 * admin API, as an operator would.
 */
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { AdminService } from "../../gen/branchsync/v1/admin_pb.ts";
import { AuthService } from "../../gen/branchsync/v1/auth_pb.ts";
import { CLI, spawnNode, type Proc } from "./procs.ts";
import { createDb, type PgServer } from "./pg.ts";
import type { BenchContext } from "./context.ts";

export interface HubProc {
  proc: Proc;
  grpcPort: number;
  httpPort: number;
  dbUrl: string;
  admin: ReturnType<typeof createClient<typeof AdminService>>;
  auth: ReturnType<typeof createClient<typeof AuthService>>;
}

export async function startHubProc(ctx: BenchContext, name: string, opts: { server?: PgServer; env?: Record<string, string>; nofile?: number } = {}): Promise<HubProc> {
  const db = await createDb(opts.server ?? ctx.server, name, ctx.tag);
  await db.pool.end();
  const adminToken = `bench-${ctx.tag}-${name}`;
  const proc = spawnNode(name, [CLI, "hub"], {
    logDir: ctx.logDir, cpuProfDir: ctx.cpuProfDir, nofile: opts.nofile ?? 65536,
    env: {
      DATABASE_URL: db.url, REDIS_URL: ctx.redisUrl, HOST: "127.0.0.1", GRPC_PORT: "0", HTTP_PORT: "0",
      ADMIN_TOKEN: adminToken, LOG_LEVEL: "warn", DRAIN_SECONDS: "2", ...ctx.hubEnv, ...opts.env,
    },
  });
  const m = await proc.waitForLine(/SyncStream grpc:\/\/[^:]+:(\d+)\s+control http:\/\/[^:]+:(\d+)/, 60_000);
  const httpUrl = `http://127.0.0.1:${m[2]}`;
  const admin = createClient(AdminService, createConnectTransport({
    baseUrl: httpUrl, httpVersion: "1.1",
    interceptors: [(next) => (req) => { req.header.set("authorization", `Bearer ${adminToken}`); return next(req); }],
  }));
  const auth = createClient(AuthService, createConnectTransport({ baseUrl: httpUrl, httpVersion: "1.1" }));
  return { proc, grpcPort: Number(m[1]), httpPort: Number(m[2]), dbUrl: db.url, admin, auth };
}

export async function createTenant(hub: HubProc, id: string): Promise<void> {
  await hub.admin.createTenant({ id, name: id });
}

/** Creates the branch and returns its API key. */
export async function createBranch(hub: HubProc, tenantId: string, branchId: string): Promise<string> {
  return (await hub.admin.createBranch({ tenantId, branchId })).apiKey;
}

export async function issueToken(hub: HubProc, apiKey: string): Promise<string> {
  return (await hub.auth.issueToken({ apiKey })).token;
}

export interface AgentSpec { tenantId: string; branchId: string; apiKey: string; dbUrl: string; tables: string }

export function agentEnv(hub: HubProc, a: AgentSpec): Record<string, string> {
  return {
    HUB_URL: `http://127.0.0.1:${hub.grpcPort}`, HUB_AUTH_URL: `http://127.0.0.1:${hub.httpPort}`,
    TENANT_ID: a.tenantId, BRANCH_ID: a.branchId, API_KEY: a.apiKey, LOCAL_DATABASE_URL: a.dbUrl,
    TRACKED_TABLES: a.tables, LOG_LEVEL: "warn",
  };
}

/** Spawns `branchsync agent`; resolves once capture is installed (the agent then dials the hub). */
export async function startAgentProc(ctx: BenchContext, hub: HubProc, name: string, a: AgentSpec, nodeArgs: string[] = []): Promise<Proc> {
  const proc = spawnAgentProc(ctx, hub, name, a, nodeArgs);
  await proc.waitForLine(/branchsync agent running/, 60_000);
  return proc;
}

export function spawnAgentProc(ctx: BenchContext, hub: HubProc, name: string, a: AgentSpec, nodeArgs: string[] = []): Proc {
  return spawnNode(name, [CLI, "agent"], {
    logDir: ctx.logDir, cpuProfDir: ctx.cpuProfDir, nodeArgs, env: { ...agentEnv(hub, a), ...ctx.agentEnv },
  });
}
