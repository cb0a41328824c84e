/**
 * The branch agent: installs capture, then keeps one SyncStream to the hub
 * alive, reconnecting with exponential backoff and full jitter.
 */
import pg from "pg";
import * as grpc from "@grpc/grpc-js";
import type { ConflictNotice } from "../gen/branchsync/v1/sync_pb.ts";
import { makeSyncClient } from "../lib/wire.ts";
import { makeBackoff } from "../lib/backoff.ts";
import { makePool, warmPool } from "../lib/pgpool.ts";
import { makeLogger, type Logger } from "../lib/log.ts";
import { introspect, type LocalTable } from "./capture/introspect.ts";
import { installCapture, NOTIFY_CHANNEL } from "./capture/install.ts";
import { startHousekeeping } from "./capture/housekeeping.ts";
import { makeApplier } from "./apply/applier.ts";
import { APPLY_SYNCHRONOUS_COMMIT } from "./config.ts";
import { runSession } from "./link/session.ts";
import { issueToken } from "./link/auth.ts";
import { makeClock } from "./capture/clock.ts";

export const AGENT_VERSION = "branchsync-agent/0.1.0";
/** Connections to the branch database: apply, capture reads and housekeeping overlap (the LISTEN one is apart). */
const POOL_MAX = 4;

export interface AgentConfig {
  hubUrl: string;
  authUrl: string;
  tenantId: string;
  branchId: string;
  apiKey: string;
  localDatabaseUrl: string;
  databaseSchema: string;
  trackedTables: string[];
  batchMaxChanges: number;
  batchLingerMs: number;
  pollMs: number;
  /** On first binding, queue the database's existing rows as inserts. */
  initialUpload?: boolean;
  /** synchronous_commit of apply transactions (agent/config.ts); default off. */
  applySynchronousCommit?: string;
  /** Added to the branch clock for HLCs; default 0. */
  clockSkewMs?: number;
}

export interface AgentStatus { connected: boolean; cursor: bigint; sessions: number; lastError: string | null }

export interface Agent {
  status(): AgentStatus;
  /** Local row changes the hub has not yet sequenced. */
  pendingLocal(): Promise<number>;
  stop(): Promise<void>;
  onConflict?: (n: ConflictNotice) => void;
}

function grpcTarget(hubUrl: string): { target: string; creds: grpc.ChannelCredentials } {
  const u = new URL(hubUrl);
  const tls = u.protocol === "https:";
  const port = u.port || (tls ? "443" : "80");
  return { target: `${u.hostname}:${port}`, creds: tls ? grpc.credentials.createSsl() : grpc.credentials.createInsecure() };
}

/** Waits for NOTIFY on the local change channel, via one dedicated connection. */
async function listenLocal(url: string, log: Logger) {
  const waiters = new Set<() => void>();
  let client: pg.Client | null = null;
  let stopped = false;
  // Counts notifications, so a reader that found nothing can tell whether
  // one arrived since it looked: otherwise a commit landing between its
  // read and its wait would sit unsent until the poll.
  let notified = 0;
  const wake = () => { notified++; for (const w of waiters) w(); };
  const onBack = new Set<() => void>();
  const connect = async () => {
    const c = new pg.Client({ connectionString: url });
    c.on("notification", wake);
    c.on("error", (err) => {
      if (client !== c) return;
      log.warn({ err: err.message }, "LISTEN connection lost; polling the change log until it is back");
      client = null;
      void reconnect();
    });
    try {
      await c.connect();
      await c.query(`LISTEN ${NOTIFY_CHANNEL}`);
    } catch (err) {
      await c.end().catch(() => undefined);
      throw err;
    }
    // Closed while it connected: the agent is stopping.
    if (stopped) { await c.end().catch(() => undefined); return; }
    client = c;
  };
  // Until it is back, however long the database is away (a restart, crash
  // recovery): without it, local commits wait for the poll (POLL_MS).
  const reconnect = async () => {
    const backoff = makeBackoff({ maxMs: 10_000 });
    for (let attempt = 1; !stopped; attempt++) {
      await new Promise((r) => setTimeout(r, Math.max(100, backoff.next())));
      if (stopped) return;
      try {
        await connect();
        log.info({ attempt }, "LISTEN connection back");
        for (const f of onBack) f();
        // What committed while no one listened announced itself to no one.
        wake();
        return;
      } catch (err) {
        log.warn({ err: (err as Error).message, attempt }, "LISTEN connection still down; polling the change log meanwhile");
      }
    }
  };
  await connect();
  return {
    mark: () => notified,
    /** Resolves on the next notification after `since` (a mark()), on timeout or on abort. */
    wait(timeoutMs: number, abort: AbortSignal, since = notified): Promise<void> {
      if (notified !== since || abort.aborted) return Promise.resolve();
      return new Promise((resolve) => {
        const done = () => { clearTimeout(t); waiters.delete(done); abort.removeEventListener("abort", done); resolve(); };
        const t = setTimeout(done, timeoutMs);
        waiters.add(done);
        abort.addEventListener("abort", done, { once: true });
      });
    },
    /**
     * Called each time the dedicated connection is back after it was lost.
     * Every connection dies with a restart of the server (a crash of one
     * backend restarts them all), so this is when to look whether one undid
     * something; a connection merely dropped (idle_session_timeout, a
     * firewall) calls it too.
     */
    onBack: (f: () => void) => { onBack.add(f); return () => { onBack.delete(f); }; },
    async close() { stopped = true; await client?.end().catch(() => undefined); },
  };
}

export async function startAgent(cfg: AgentConfig, log: Logger = makeLogger("agent")): Promise<Agent> {
  log = log.child({ tenant: cfg.tenantId, branch: cfg.branchId });
  // Read committed whatever the database's default: the applier needs it
  // (and asks for it); under a stricter default every batch would take the
  // careful path. Options in the URL itself take precedence over this.
  const pool = makePool(cfg.localDatabaseUrl, POOL_MAX, "-c default_transaction_isolation=read\\ committed");
  pool.on("error", (err) => log.warn({ err: err.message }, "idle branch database connection failed"));
  const names = cfg.trackedTables.map((t) => (t.includes(".") ? t : `${cfg.databaseSchema}.${t}`));
  let tables: LocalTable[];
  let cursor: bigint;
  const t0 = performance.now();
  const db = await pool.connect();
  try {
    tables = [];
    for (const n of names) tables.push(await introspect(db, n));
    cursor = await installCapture(db, tables, cfg.tenantId, cfg.branchId, cfg.initialUpload ?? false);
  } finally {
    db.release();
  }
  // In the background: the hub connection need not wait for it (a drain's
  // first rows would), and the pool connects on demand if this failed.
  warmPool(pool, POOL_MAX).catch((err) => log.warn({ err: (err as Error).message }, "opening the branch database connections ahead of need failed"));
  const t1 = performance.now();
  const listener = await listenLocal(cfg.localDatabaseUrl, log);
  log.debug({ installMs: Math.round(t1 - t0), listenMs: Math.round(performance.now() - t1) }, "capture installed, listening");
  const { target, creds } = grpcTarget(cfg.hubUrl);
  const client = makeSyncClient(target, creds);
  const applier = makeApplier(pool, tables, { synchronousCommit: cfg.applySynchronousCommit ?? APPLY_SYNCHRONOUS_COMMIT });
  const housekeeping = startHousekeeping(pool, log);
  const clock = makeClock(cfg.clockSkewMs ?? 0);
  const backoff = makeBackoff();
  const state: AgentStatus = { connected: false, cursor, sessions: 0, lastError: null };
  let token: { value: string; expiresAt: number } | null = null;
  let stopped = false;
  const stopping = new AbortController();
  let wakeFromSleep: (() => void) | null = null;
  const agent: Agent = {
    status: () => ({ ...state }),
    async pendingLocal() {
      const { rows } = await pool.query("SELECT coalesce(sum(c.n), 0)::int AS n FROM _branchsync.changes c JOIN _branchsync.txns t USING (txid) WHERE t.seq IS NULL");
      return rows[0].n;
    },
    async stop() {
      stopped = true;
      stopping.abort();
      wakeFromSleep?.();
      await loop;
      await housekeeping.stop();
      client.close();
      await listener.close();
      await pool.end();
    },
  };

  async function getToken(): Promise<string> {
    if (token && token.expiresAt - 60 > Date.now() / 1000) return token.value;
    const r = await issueToken(cfg.authUrl || cfg.hubUrl, cfg.apiKey);
    if (r.tenantId !== cfg.tenantId || r.branchId !== cfg.branchId) {
      throw new Error(`API_KEY belongs to tenant "${r.tenantId}" branch "${r.branchId}", not the configured "${cfg.tenantId}"/"${cfg.branchId}"`);
    }
    token = { value: r.token, expiresAt: r.expiresAt };
    return token.value;
  }

  const loop = (async () => {
    while (!stopped) {
      try {
        const t = await getToken();
        state.sessions++;
        const res = await runSession({
          pool, client, tables, tenantId: cfg.tenantId, branchId: cfg.branchId,
          batchMaxChanges: cfg.batchMaxChanges, batchLingerMs: cfg.batchLingerMs, pollMs: cfg.pollMs,
          applier, clock, log, waitLocal: listener.wait, localMark: listener.mark, stopping: stopping.signal, onLocalBack: listener.onBack,
          onCursor: (c) => { state.cursor = c; state.connected = true; },
          onConflict: (n) => agent.onConflict?.(n),
        }, t, AGENT_VERSION);
        state.connected = false;
        if (res.established) backoff.reset();
        if (res.error && !stopped) {
          state.lastError = `${grpc.status[res.error.code] ?? res.error.code}: ${res.error.details}`;
          if (res.error.code === grpc.status.UNAUTHENTICATED) token = null;
          log.warn({ code: res.error.code, details: res.error.details }, "stream ended");
        }
      } catch (e) {
        state.connected = false;
        state.lastError = (e as Error).message;
        if (!stopped) log.warn({ err: (e as Error).message }, "cannot reach the hub");
      }
      if (stopped) break;
      const wait = backoff.next();
      await new Promise<void>((r) => { const t = setTimeout(r, wait); wakeFromSleep = () => { clearTimeout(t); r(); }; });
      wakeFromSleep = null;
    }
  })();
  return agent;
}
