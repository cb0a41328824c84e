import { bool, int, list, pattern, str, url } from "../lib/config.ts";
import { TENANT_ID, BRANCH_ID } from "../lib/ident.ts";
import { heapGrowingPercent } from "../lib/heap.ts";

/** PostgreSQL's values for synchronous_commit. */
export const SYNCHRONOUS_COMMIT = /^(off|local|remote_write|on|remote_apply)$/;
export const APPLY_SYNCHRONOUS_COMMIT = "off";

export const agentSpec = {
  hubUrl: url("hub data plane (SyncStream), e.g. http://127.0.0.1:50051 or https://sync.example.com", "HUB_URL", "hub-url", ["http:", "https:"]),
  authUrl: url("hub control plane for AuthService; defaults to HUB_URL (right behind Envoy)", "HUB_AUTH_URL", "hub-auth-url", ["http:", "https:"], ""),
  tenantId: pattern("tenant this branch belongs to (checked against the token)", "TENANT_ID", "tenant-id", TENANT_ID),
  branchId: pattern("this branch's id (checked against the token)", "BRANCH_ID", "branch-id", BRANCH_ID),
  apiKey: str("branch API key from `branchsync admin branch create`", "API_KEY", "api-key"),
  localDatabaseUrl: url("the branch's PostgreSQL", "LOCAL_DATABASE_URL", "local-database-url", ["postgres:", "postgresql:"]),
  databaseSchema: pattern("schema of unqualified TRACKED_TABLES", "DATABASE_SCHEMA", "database-schema", /^[a-z_][a-z0-9_$]{0,62}$/, "public"),
  trackedTables: list("comma-separated tables to sync, e.g. items,orders or public.items", "TRACKED_TABLES", "tracked-tables", /^([a-z_][a-z0-9_$]{0,62}\.)?[a-z_][a-z0-9_$]{0,62}$/),
  batchMaxChanges: int("most changes in one upstream batch (larger transactions travel in chunks)", "BATCH_MAX_CHANGES", "batch-max-changes", 500, 1, 20_000),
  // A wait is latency, but one batch instead of several costs every process
  // on the way less CPU, and on a busy machine CPU is what latency waits
  // for: at 500 tx/s, 5 ms gave a lower p99 than 0 (session 8, bench latency).
  batchLingerMs: int("after a partial batch, how long the next waits for its ack to gather what commits meanwhile (0: no wait)", "BATCH_LINGER_MS", "batch-linger-ms", 5, 0, 10_000),
  initialUpload: bool("on the first start against this database, send its existing rows to the other branches", "INITIAL_UPLOAD", "initial-upload", false),
  pollMs: int("fallback poll of the local change log when no NOTIFY arrives", "POLL_MS", "poll-ms", 1000, 10, 60_000),
  // PostgreSQL's own subscriptions apply with synchronous_commit off by
  // default, for the same reason: what a crash of the branch database takes
  // back is the cursor with the rows, so the hub sends them again.
  applySynchronousCommit: pattern("synchronous_commit for applying the hub's changes here (off: a crash of this database may undo the last applied batches with their cursor, which the hub then resends; on: each applied batch waits for its WAL flush)",
    "APPLY_SYNCHRONOUS_COMMIT", "apply-synchronous-commit", SYNCHRONOUS_COMMIT, APPLY_SYNCHRONOUS_COMMIT),
  clockSkewMs: int("correction added to this branch's clock when stamping HLCs (for a clock that cannot be fixed; tests use it to fake a skewed branch)", "CLOCK_SKEW_MS", "clock-skew-ms", 0, -86_400_000, 86_400_000),
  heapGrowingPercent,
};
