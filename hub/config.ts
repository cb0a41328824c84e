import { int, str, url } from "../lib/config.ts";
import { heapGrowingPercent } from "../lib/heap.ts";

export const hubSpec = {
  databaseUrl: url("hub PostgreSQL", "DATABASE_URL", "database-url", ["postgres:", "postgresql:"], "postgresql://postgres@127.0.0.1:5432/branchsync"),
  redisUrl: url("Redis for the replica bridge", "REDIS_URL", "redis-url", ["redis:", "rediss:"], "redis://127.0.0.1:6379"),
  host: str("address to listen on", "HOST", "host", "0.0.0.0"),
  grpcPort: int("SyncStream (grpc-js) port", "GRPC_PORT", "grpc-port", 50051, 0, 65535),
  httpPort: int("control plane port: Auth/Admin (Connect, gRPC, gRPC-Web), /healthz, /metrics, JWKS", "HTTP_PORT", "http-port", 8080, 0, 65535),
  adminToken: str("bearer token for AdminService; generated into .branchsync/admin-token if unset", "ADMIN_TOKEN", "admin-token", ""),
  tokenTtlSeconds: int("access token lifetime", "TOKEN_TTL_SECONDS", "token-ttl-seconds", 900, 30, 86_400),
  drainSeconds: int("how long shutdown waits for sessions to move away", "DRAIN_SECONDS", "drain-seconds", 10, 0, 600),
  maxBatchChanges: int("largest ChangeBatch accepted", "MAX_BATCH_CHANGES", "max-batch-changes", 2000, 10, 20_000),
  pollMs: int("fallback poll of the tenant log when no wake-up arrives (Redis down)", "LOG_POLL_MS", "log-poll-ms", 1000, 10, 60_000),
  maxClockSkewMs: int("how far ahead of the hub's clock a branch's HLC may be; further ahead is refused until its clock is fixed", "MAX_CLOCK_SKEW_MS", "max-clock-skew-ms", 60_000, 0, 86_400_000),
  poolSize: int("PostgreSQL connections per replica", "PG_POOL_SIZE", "pg-pool-size", 20, 2, 500),
  heapGrowingPercent,
};
