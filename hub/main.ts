/**
 * Starts one hub replica: migrations, token keys, the grpc-js data plane,
 * the connect-node control plane and the Redis bridge; stops it gracefully.
 */
import pg from "pg";
import * as grpc from "@grpc/grpc-js";
import type net from "node:net";
import { makePool, warmPool } from "../lib/pgpool.ts";
import { makeLogger, type Logger } from "../lib/log.ts";
import { migrate } from "./store/migrate.ts";
import { ensureDatabase } from "./store/database.ts";
import { makeTokenService } from "./auth/tokens.ts";
import { makeFeed } from "./stream/feed.ts";
import { makeSharedReader } from "./stream/sharedReads.ts";
import { readHead } from "./store/log.ts";
import { tenantSchema } from "./store/tenants.ts";
import { startBridge } from "./bridge/redis.ts";
import { makeStreamServer } from "./stream/server.ts";
import { DEFAULT_LIMITS } from "./stream/session.ts";
import { startControl } from "./control/server.ts";

/** Connections opened at start: enough for appends, log reads and auth to overlap without a backend starting mid-burst. */
const WARM_CONNECTIONS = 4;

// bigint columns come back as strings; we convert where we read them.
export interface HubConfig {
  databaseUrl: string;
  redisUrl: string;
  host: string;
  grpcPort: number;
  httpPort: number;
  adminToken: string;
  tokenTtlSeconds: number;
  drainSeconds: number;
  maxBatchChanges: number;
  poolSize: number;
  pollMs: number;
  /** Default 60 s. */
  maxClockSkewMs?: number;
}

export interface Hub {
  grpcPort: number;
  httpPort: number;
  pool: pg.Pool;
  sessionCount(): number;
  /** Graceful: health goes NOT_SERVING, sessions get Drain, then stop. */
  close(): Promise<void>;
}

export async function startHub(cfg: HubConfig, log: Logger = makeLogger("hub")): Promise<Hub> {
  await ensureDatabase(cfg.databaseUrl, log);
  const pool = makePool(cfg.databaseUrl, cfg.poolSize);
  pool.on("error", (err) => log.warn({ err: err.message }, "idle PostgreSQL connection failed"));
  await migrate(pool);
  await warmPool(pool, Math.min(cfg.poolSize, WARM_CONNECTIONS));
  const tokens = await makeTokenService(pool, cfg.tokenTtlSeconds);
  const feed = makeFeed((tenantId) => readHead(pool, tenantSchema(tenantId)), cfg.pollMs,
    (err) => log.warn({ err: (err as Error).message }, "polling tenant heads failed"));
  const bridge = startBridge(cfg.redisUrl, feed, log);
  const limits = { ...DEFAULT_LIMITS, maxBatchChanges: cfg.maxBatchChanges, maxClockSkewMs: cfg.maxClockSkewMs ?? DEFAULT_LIMITS.maxClockSkewMs };
  const stream = makeStreamServer({ pool, logReader: makeSharedReader(pool), feed, publish: bridge.publish, log, limits }, tokens);
  const grpcPort = await new Promise<number>((resolve, reject) =>
    stream.server.bindAsync(`${cfg.host}:${cfg.grpcPort}`, grpc.ServerCredentials.createInsecure(), (err, port) => (err ? reject(err) : resolve(port))));
  let serving = true;
  let control: net.Server;
  try {
    control = await startControl({ pool, tokens, adminToken: cfg.adminToken, log, isServing: () => serving,
      onAppend: (tenantId, head) => { feed.advance(tenantId, head); bridge.publish(tenantId, head); } }, cfg.httpPort, cfg.host);
  } catch (e) {
    stream.server.forceShutdown();
    throw e;
  }
  const httpPort = (control.address() as net.AddressInfo).port;
  log.info({ grpcPort, httpPort }, "hub serving");
  return {
    grpcPort, httpPort, pool,
    sessionCount: () => stream.sessions.size,
    async close() {
      serving = false;
      stream.health.setStatus("", "NOT_SERVING");
      stream.health.setStatus("branchsync.v1.SyncService", "NOT_SERVING");
      for (const s of stream.sessions) s.drain("hub replica shutting down");
      const deadline = Date.now() + cfg.drainSeconds * 1000;
      while (stream.sessions.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      await new Promise<void>((resolve) => stream.server.tryShutdown(() => resolve()));
      stream.server.forceShutdown();
      await new Promise<void>((resolve) => control.close(() => resolve()));
      await bridge.close();
      feed.close();
      await pool.end();
      log.info("hub stopped");
    },
  };
}
