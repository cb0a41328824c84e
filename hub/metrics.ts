/**
 * Hub metrics. Labels never carry tenant or branch names: /metrics is one
 * page for the operator, and names are customer data.
 */
import client from "prom-client";

export const registry = new client.Registry();
client.collectDefaultMetrics({ register: registry });

export const metrics = {
  sessions: new client.Gauge({ name: "branchsync_sessions", help: "Open SyncStream sessions", registers: [registry] }),
  changesIn: new client.Counter({ name: "branchsync_changes_ingested_total", help: "Row changes accepted into tenant logs", registers: [registry] }),
  changesOut: new client.Counter({ name: "branchsync_changes_sent_total", help: "Row changes sent to branches", registers: [registry] }),
  authFailures: new client.Counter({ name: "branchsync_auth_failures_total", help: "Rejected tokens and API keys", registers: [registry] }),
  heartbeatRtt: new client.Histogram({
    name: "branchsync_heartbeat_rtt_seconds", help: "Ping to Pong round trip", registers: [registry],
    buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
  }),
};
