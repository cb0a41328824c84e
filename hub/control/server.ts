/**
 * The control plane: AuthService and AdminService through connect-node
 * (gRPC, gRPC-Web and Connect JSON on one port), plus plain HTTP endpoints
 * for operators and Envoy: /healthz, /metrics, /.well-known/jwks.json.
 */
import type net from "node:net";
import type pg from "pg";
import { timingSafeEqual, createHash } from "node:crypto";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { Code, ConnectError, type HandlerContext } from "@connectrpc/connect";
import { AuthService } from "../../gen/branchsync/v1/auth_pb.ts";
import { AdminService } from "../../gen/branchsync/v1/admin_pb.ts";
import type { TokenService } from "../auth/tokens.ts";
import { verifyApiKey, createApiKey } from "../auth/apiKeys.ts";
import { createTenant, listTenants, createBranch, listBranches } from "../store/tenants.ts";
import { toPublicError } from "../errors.ts";
import type { Logger } from "../../lib/log.ts";
import { registry, metrics } from "../metrics.ts";
import { listenDual } from "./listener.ts";
import { makeConflictAdmin } from "./conflictAdmin.ts";

export interface ControlDeps {
  pool: pg.Pool;
  tokens: TokenService;
  adminToken: string;
  log: Logger;
  isServing: () => boolean;
  /** An admin call appended to a tenant log (a conflict resolution): wake its sessions. */
  onAppend: (tenantId: string, head: bigint) => void;
}

const secs = (d: Date | null) => (d ? BigInt(Math.floor(d.getTime() / 1000)) : 0n);
const digest = (s: string) => createHash("sha256").update(s).digest();

/** Runs a handler body and turns every failure into a ConnectError. */
async function guarded<T>(log: Logger, f: () => Promise<T>): Promise<T> {
  try {
    return await f();
  } catch (e) {
    if (e instanceof ConnectError) throw e;
    const pe = toPublicError(e, log);
    // gRPC status numbers and Connect codes are the same numbers.
    throw new ConnectError(pe.message, pe.code as number as Code);
  }
}

export function startControl(deps: ControlDeps, port: number, host: string): Promise<net.Server> {
  const { pool, log } = deps;
  const requireAdmin = (ctx: HandlerContext) => {
    const h = ctx.requestHeader.get("authorization") ?? "";
    const m = /^Bearer\s+(\S+)$/i.exec(h);
    if (!m || !timingSafeEqual(digest(m[1]), digest(deps.adminToken))) {
      throw new ConnectError("admin calls need `authorization: Bearer <ADMIN_TOKEN>`", Code.Unauthenticated);
    }
  };
  const conflicts = makeConflictAdmin(pool, deps.onAppend);
  const admin = <T>(ctx: HandlerContext, f: () => Promise<T>) => guarded(log, async () => { requireAdmin(ctx); return f(); });
  const handler = connectNodeAdapter({
    // Every client we know offers gzip, and gzipping small admin messages
    // only burns CPU the data plane needs.
    acceptCompression: [],
    readMaxBytes: 1024 * 1024,
    routes(router) {
      router.service(AuthService, {
        issueToken: (req) => guarded(log, async () => {
          try {
            const id = await verifyApiKey(pool, req.apiKey);
            const t = await deps.tokens.issue(id);
            return { token: t.token, expiresAt: BigInt(t.expiresAt), tenantId: id.tenantId, branchId: id.branchId };
          } catch (e) {
            metrics.authFailures.inc();
            throw e;
          }
        }),
      });
      router.service(AdminService, {
        createTenant: (req, ctx) => guarded(log, async () => {
          requireAdmin(ctx);
          const t = await createTenant(pool, req.id, req.name);
          return { tenant: { id: t.id, name: t.name, createdAt: secs(t.createdAt), headSeq: t.headSeq } };
        }),
        listTenants: (_req, ctx) => guarded(log, async () => {
          requireAdmin(ctx);
          const ts = await listTenants(pool);
          return { tenants: ts.map((t) => ({ id: t.id, name: t.name, createdAt: secs(t.createdAt), headSeq: t.headSeq })) };
        }),
        createBranch: (req, ctx) => guarded(log, async () => {
          requireAdmin(ctx);
          const b = await createBranch(pool, req.tenantId, req.branchId, req.name);
          const apiKey = await createApiKey(pool, b.tenantId, b.id);
          return { branch: { tenantId: b.tenantId, id: b.id, name: b.name, createdAt: secs(b.createdAt) }, apiKey };
        }),
        listBranches: (req, ctx) => guarded(log, async () => {
          requireAdmin(ctx);
          const head = (await listTenants(pool)).find((t) => t.id === req.tenantId)?.headSeq ?? 0n;
          const bs = await listBranches(pool, req.tenantId);
          return { branches: bs.map((b) => ({
            tenantId: b.tenantId, id: b.id, name: b.name, createdAt: secs(b.createdAt),
            ackedSeq: b.ackedSeq, lag: head > b.ackedSeq ? head - b.ackedSeq : 0n, lastSeenAt: secs(b.lastSeenAt),
          })) };
        }),
        setTablePolicy: (req, ctx) => admin(ctx, () => conflicts.setTablePolicy(req.tenantId, req.policy)),
        listTablePolicies: (req, ctx) => admin(ctx, () => conflicts.listTablePolicies(req.tenantId)),
        listConflicts: (req, ctx) => admin(ctx, () => conflicts.listConflicts(req.tenantId, req.table, req.status, req.limit, req.beforeId)),
        getConflict: (req, ctx) => admin(ctx, () => conflicts.getConflict(req.tenantId, req.id)),
        resolveConflict: (req, ctx) => admin(ctx, () => conflicts.resolveConflict(req.tenantId, req.id, req.resolution, req.row)),
        listQuarantined: (req, ctx) => admin(ctx, () => conflicts.listQuarantined(req.tenantId, req.branchId, req.status)),
        retryQuarantined: (req, ctx) => admin(ctx, () => conflicts.requestQuarantine(req.tenantId, req.branchId, req.seq, "retry")),
        discardQuarantined: (req, ctx) => admin(ctx, () => conflicts.requestQuarantine(req.tenantId, req.branchId, req.seq, "discard")),
      });
    },
  });
  return listenDual((req, res) => {
    const path = (req.url ?? "").split("?")[0];
    if (req.method === "GET" && path === "/healthz") {
      const ok = deps.isServing();
      res.writeHead(ok ? 200 : 503, { "content-type": "text/plain" });
      res.end(ok ? "serving\n" : "draining\n");
      return;
    }
    if (req.method === "GET" && path === "/metrics") {
      registry.metrics().then((body) => {
        res.writeHead(200, { "content-type": registry.contentType });
        res.end(body);
      }, (err) => { log.error({ err }, "metrics failed"); res.writeHead(500); res.end(); });
      return;
    }
    if (req.method === "GET" && path === "/.well-known/jwks.json") {
      res.writeHead(200, { "content-type": "application/json", "cache-control": "max-age=300" });
      res.end(JSON.stringify(deps.tokens.jwks()));
      return;
    }
    handler(req, res);
  }, port, host);
}
