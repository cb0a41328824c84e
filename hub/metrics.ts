/**
 * Hub metrics, for the hub's operator (the control port is not routed to
 * branches). Labels never carry tenant or branch display names or branch
 * ids. Conflicts are counted per tenant id and table, as operators need to
 * see which tenant's tables collide; those are ids, not names.
 */
import client from "prom-client";

export const registry = new client.Registry();
client.collectDefaultMetrics({ register: registry });

export const metrics = {
  sessions: new client.Gauge({ name: "branchsync_sessions", help: "Open SyncStream sessions", registers: [registry] }),
  changesIn: new client.Counter({ name: "branchsync_changes_ingested_total", help: "Row changes accepted into tenant logs", registers: [registry] }),
  batchesIn: new client.Counter({ name: "branchsync_batches_ingested_total", help: "Upstream ChangeBatches appended (changes_ingested / this = the branches' batching)", registers: [registry] }),
  changesOut: new client.Counter({ name: "branchsync_changes_sent_total", help: "Row changes sent to branches", registers: [registry] }),
  authFailures: new client.Counter({ name: "branchsync_auth_failures_total", help: "Rejected tokens and API keys", registers: [registry] }),
  conflicts: new client.Counter({
    name: "branchsync_conflicts_total", help: "Concurrent changes to one row, by tenant id, table and strategy", registers: [registry],
    labelNames: ["tenant", "table", "strategy"],
  }),
  logReads: new client.Counter({ name: "branchsync_log_reads_total", help: "Reads of tenant logs that went to PostgreSQL (shared and own-append skips excluded)", registers: [registry] }),
  bridgePublishes: new client.Counter({ name: "branchsync_bridge_publishes_total", help: "Log head moves published to other replicas over Redis", registers: [registry] }),
  quarantined: new client.Counter({ name: "branchsync_quarantined_total", help: "Transactions branches reported they could not apply", registers: [registry] }),
  heartbeatRtt: new client.Histogram({
    name: "branchsync_heartbeat_rtt_seconds", help: "Ping to Pong round trip", registers: [registry],
    buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
  }),
};
