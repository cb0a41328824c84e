/**
 * The A → B topology of the throughput and latency sections: a hub process,
 * two branch databases with identical base rows and the anchors' local
 * `bench` helpers, and one `branchsync agent` process per branch tracking
 * public.items only.
 */
import pg from "pg";
import { nowMs } from "./stats.ts";
import { createDb, type BenchDb, type PgServer } from "./pg.ts";
import { startHubProc, createTenant, createBranch, startAgentProc, spawnAgentProc, type HubProc, type AgentSpec } from "./deploy.ts";
import { ITEMS_DDL, ARRIVAL_TRIGGER, SENT_TRIGGER, baseRowsSql } from "./items.ts";
import { waitUntil } from "./poll.ts";
import type { Proc } from "./procs.ts";
import type { BenchContext } from "./context.ts";
import { makePool } from "../../lib/pgpool.ts";

export interface Pair {
  hub: HubProc;
  tenant: string;
  a: BenchDb;
  b: BenchDb;
  agentA: Proc;
  agentB: Proc | null;
  specB: AgentSpec;
  /** Stops B's agent (SIGTERM, waits for exit). */
  stopB(): Promise<void>;
  /** Spawns B's agent again; returns at once (the caller times the catch-up). */
  spawnB(): Proc;
  /** Inserts a barrier row on A and waits until B has it. */
  barrier(timeoutMs?: number): Promise<void>;
  /** Tenant log head on the hub. */
  hubHead(): Promise<bigint>;
  close(): Promise<void>;
}

export async function startPair(ctx: BenchContext, name: string, o: { baseRows: number; sentTrigger: boolean; server?: PgServer }): Promise<Pair> {
  const server = o.server ?? ctx.server;
  const a = await createDb(server, `${name}_a`, ctx.tag, ITEMS_DDL);
  const b = await createDb(server, `${name}_b`, ctx.tag, ITEMS_DDL + ARRIVAL_TRIGGER);
  if (o.sentTrigger) await a.pool.query(SENT_TRIGGER);
  for (const db of [a, b]) {
    if (o.baseRows > 0) await db.pool.query(baseRowsSql(o.baseRows));
    await db.pool.query("VACUUM ANALYZE public.items");
  }
  const hub = await startHubProc(ctx, `${name}_hub`, { server });
  const tenant = `${name}_${ctx.tag}`.slice(0, 30);
  await createTenant(hub, tenant);
  const keyA = await createBranch(hub, tenant, "a");
  const keyB = await createBranch(hub, tenant, "b");
  const specA: AgentSpec = { tenantId: tenant, branchId: "a", apiKey: keyA, dbUrl: a.url, tables: "public.items" };
  const specB: AgentSpec = { tenantId: tenant, branchId: "b", apiKey: keyB, dbUrl: b.url, tables: "public.items" };
  const agentA = await startAgentProc(ctx, hub, `${name}_agent_a`, specA);
  let agentB: Proc | null = await startAgentProc(ctx, hub, `${name}_agent_b`, specB);
  let restarts = 0;
  const hubPool = makePool(hub.dbUrl, 1);
  hubPool.on("error", () => undefined);
  const pair: Pair = {
    hub, tenant, a, b, agentA, get agentB() { return agentB; }, specB,
    async stopB() { await agentB?.stop(); agentB = null; },
    spawnB() {
      agentB = spawnAgentProc(ctx, hub, `${name}_agent_b${++restarts}`, specB);
      return agentB;
    },
    async barrier(timeoutMs = 60_000) {
      const { rows } = await a.pool.query(`INSERT INTO public.items(id,sku,qty,price,note,updated_at)
        VALUES (nextval('bench.barrier_seq'),'barrier',0,0,'barrier',clock_timestamp()) RETURNING id`);
      await waitUntil(b.pool, `SELECT EXISTS(SELECT 1 FROM public.items WHERE id=${rows[0].id})`, timeoutMs, 10);
    },
    async hubHead() {
      const { rows } = await hubPool.query(`SELECT seq FROM "tenant_${tenant}".head`);
      return BigInt(rows[0].seq);
    },
    async close() {
      await agentB?.stop();
      await agentA.stop();
      await hub.proc.stop();
      await hubPool.end().catch(() => undefined);
    },
  };
  return pair;
}

/** Runs statements one by one on a dedicated client (like psql -f), returning the time after the first and the last commit. */
export async function runStatements(c: pg.Client, stmts: string[]): Promise<{ t0: number; t1: number }> {
  let t0 = 0;
  for (let i = 0; i < stmts.length; i++) {
    await c.query(stmts[i]);
    if (i === 0) t0 = nowMs();
  }
  return { t0, t1: nowMs() };
}
