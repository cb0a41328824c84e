/** `branchsync admin ...`: a thin client of AdminService over Connect. */
import { createClient, ConnectError, Code } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { AdminService } from "../gen/branchsync/v1/admin_pb.ts";
import { ConfigError, parseConfig, url, str, helpText, type Spec } from "../lib/config.ts";
import { readAdminTokenFile } from "./adminToken.ts";
import { ADMIN_USAGE } from "./usage.ts";
import { runConflictAdmin } from "./adminConflicts.ts";

const adminSpec = {
  adminUrl: url("hub control plane", "HUB_ADMIN_URL", "hub-admin-url", ["http:", "https:"], "http://127.0.0.1:8080"),
  adminToken: str("AdminService bearer token (default: .branchsync/admin-token written by `branchsync hub`)", "ADMIN_TOKEN", "admin-token", ""),
  name: str("display name for create", "BRANCHSYNC_NAME", "name", ""),
  strategy: str("policy set: conflict strategy", "BRANCHSYNC_STRATEGY", "strategy", ""),
  priority: str("policy set: branch ids, highest priority first (comma-separated)", "BRANCHSYNC_PRIORITY", "priority", ""),
  delta: str("policy set: counter columns (comma-separated)", "BRANCHSYNC_DELTA", "delta", ""),
  table: str("conflicts list: only this table", "BRANCHSYNC_TABLE", "table", ""),
  status: str("conflicts/quarantine list: only this status", "BRANCHSYNC_STATUS", "status", ""),
  limit: str("conflicts list: page size", "BRANCHSYNC_LIMIT", "limit", ""),
  take: str("conflicts resolve: existing, incoming or row", "BRANCHSYNC_TAKE", "take", ""),
  row: str("conflicts resolve --take row: the full row as JSON", "BRANCHSYNC_ROW", "row", ""),
  branch: str("quarantine list: only this branch", "BRANCHSYNC_BRANCH", "branch", ""),
} satisfies Spec;


const date = (s: bigint) => (s ? new Date(Number(s) * 1000).toISOString() : "-");

export async function runAdmin(positional: string[], flags: Map<string, string>, out: (s: string) => void): Promise<void> {
  if (flags.has("help")) { out(`${ADMIN_USAGE}\n\n${helpText("branchsync admin", adminSpec)}`); return; }
  const cfg = parseConfig(adminSpec, flags, process.env);
  const token = cfg.adminToken || readAdminTokenFile();
  if (!token) throw new ConfigError("ADMIN_TOKEN (or --admin-token) is required: the hub's admin token");
  const client = createClient(AdminService, createConnectTransport({
    baseUrl: cfg.adminUrl, httpVersion: "1.1",
    interceptors: [(next) => (req) => { req.header.set("authorization", `Bearer ${token}`); return next(req); }],
  }));
  const [noun, verb, a, b] = positional;
  const need = (v: string | undefined, what: string) => { if (!v) throw new ConfigError(`missing ${what}\n${ADMIN_USAGE}`); return v; };
  try {
    if (noun === "tenant" && verb === "create") {
      const r = await client.createTenant({ id: need(a, "<tenant-id>"), name: cfg.name });
      out(`created tenant ${r.tenant!.id} (${r.tenant!.name})`);
    } else if (noun === "tenant" && verb === "list") {
      const r = await client.listTenants({});
      out(["ID\tNAME\tHEAD\tCREATED", ...r.tenants.map((t) => `${t.id}\t${t.name}\t${t.headSeq}\t${date(t.createdAt)}`)].join("\n"));
    } else if (noun === "branch" && verb === "create") {
      const r = await client.createBranch({ tenantId: need(a, "<tenant-id>"), branchId: need(b, "<branch-id>"), name: cfg.name });
      out(`created branch ${r.branch!.id} in tenant ${r.branch!.tenantId}\nAPI_KEY=${r.apiKey}\n(store it now: it is not shown again)`);
    } else if (noun === "branch" && verb === "list") {
      const r = await client.listBranches({ tenantId: need(a, "<tenant-id>") });
      out(["ID\tNAME\tACKED\tLAG\tLAST_SEEN", ...r.branches.map((x) => `${x.id}\t${x.name}\t${x.ackedSeq}\t${x.lag}\t${date(x.lastSeenAt)}`)].join("\n"));
    } else if (!(await runConflictAdmin(client, positional, flags, need, out))) {
      throw new ConfigError(`unknown admin command "${positional.join(" ")}"\n${ADMIN_USAGE}`);
    }
  } catch (e) {
    if (e instanceof ConnectError) {
      throw new Error(`${Code[e.code]}: ${e.rawMessage}`);
    }
    throw e;
  }
}
