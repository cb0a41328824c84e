/**
 * A hub (in this process) plus branches with their own databases and
 * agents, for integration tests against the real PostgreSQL and Redis.
 */
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { pino } from "pino";
import { AdminService } from "../../gen/branchsync/v1/admin_pb.ts";
import { startHub, type Hub, type HubConfig } from "../../hub/main.ts";
import { startAgent, type Agent, type AgentConfig } from "../../agent/main.ts";
import { createDb, type TestDb } from "./db.ts";

export const ADMIN_TOKEN = "test-admin-token";
export const quiet = pino({ level: process.env.TEST_LOG_LEVEL ?? "silent" });

export interface Branch {
  tenantId: string;
  branchId: string;
  apiKey: string;
  db: TestDb;
  agent: Agent | null;
  config: AgentConfig;
  start(): Promise<Agent>;
  stop(): Promise<void>;
}

export interface Cluster {
  hub: Hub;
  hubDb: TestDb;
  admin: ReturnType<typeof createClient<typeof AdminService>>;
  addTenant(id: string): Promise<void>;
  /** `dbBase`: the server for the branch's database (default: the test server). */
  addBranch(tenantId: string, branchId: string, ddl: string, tables: string[], overrides?: Partial<AgentConfig>, dbBase?: string): Promise<Branch>;
  close(): Promise<void>;
}

export function hubConfig(databaseUrl: string, overrides: Partial<HubConfig> = {}): HubConfig {
  return {
    databaseUrl, redisUrl: process.env.TEST_REDIS_URL ?? "redis://127.0.0.1:6379",
    host: "127.0.0.1", grpcPort: 0, httpPort: 0, adminToken: ADMIN_TOKEN, tokenTtlSeconds: 900,
    drainSeconds: 2, maxBatchChanges: 2000, poolSize: 10, pollMs: 1000, ...overrides,
  };
}

/** `hubDbBase`: the server for the hub's database (default: the test server). */
export async function startCluster(hubDbBase?: string): Promise<Cluster> {
  const hubDb = await createDb("hub", undefined, hubDbBase);
  const hub = await startHub(hubConfig(hubDb.url), quiet);
  const admin = createClient(AdminService, createConnectTransport({
    baseUrl: `http://127.0.0.1:${hub.httpPort}`, httpVersion: "1.1",
    interceptors: [(next) => (req) => { req.header.set("authorization", `Bearer ${ADMIN_TOKEN}`); return next(req); }],
  }));
  const branches: Branch[] = [];
  return {
    hub, hubDb, admin,
    async addTenant(id) { await admin.createTenant({ id, name: id }); },
    async addBranch(tenantId, branchId, ddl, tables, overrides = {}, dbBase) {
      const db = await createDb(branchId.replace(/-/g, "_"), ddl, dbBase);
      const r = await admin.createBranch({ tenantId, branchId });
      const config: AgentConfig = {
        hubUrl: `http://127.0.0.1:${hub.grpcPort}`, authUrl: `http://127.0.0.1:${hub.httpPort}`,
        tenantId, branchId, apiKey: r.apiKey, localDatabaseUrl: db.url, databaseSchema: "public",
        trackedTables: tables, batchMaxChanges: 500, batchLingerMs: 5, pollMs: 500, ...overrides,
      };
      const b: Branch = {
        tenantId, branchId, apiKey: r.apiKey, db, agent: null, config,
        async start() { b.agent = await startAgent(b.config, quiet); return b.agent; },
        async stop() { const a = b.agent; b.agent = null; await a?.stop(); },
      };
      branches.push(b);
      return b;
    },
    async close() {
      for (const b of branches) await b.stop().catch(() => undefined);
      await hub.close();
      for (const b of branches) await b.db.drop().catch(() => undefined);
      await hubDb.drop();
    },
  };
}

export const ITEMS_DDL = `CREATE TABLE items (id bigint PRIMARY KEY, sku text, qty int, price numeric(12,2), note text, updated_at timestamptz)`;

/** Counts every row write at a branch, including the agent's applies, so "applied exactly once" is checkable. */
export const AUDIT_DDL = `
  CREATE TABLE audit (n bigserial PRIMARY KEY, id bigint, op text);
  CREATE FUNCTION audit_fn() RETURNS trigger LANGUAGE plpgsql AS $$
  BEGIN INSERT INTO audit(id, op) VALUES (coalesce(NEW.id, OLD.id), TG_OP); RETURN NULL; END $$;
  CREATE TRIGGER audit_items AFTER INSERT OR UPDATE OR DELETE ON items FOR EACH ROW EXECUTE FUNCTION audit_fn();`;
