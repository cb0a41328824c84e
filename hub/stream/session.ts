/**
 * One branch session of SyncStream, independent of the transport: the
 * server hands it decoded AgentMessages and a way to send HubMessages.
 *
 * Upstream, batches are processed one at a time in arrival order, and each
 * BatchAck is sent only after its transactions are committed to the log.
 * Downstream (downstream.ts) sends the tenant log after the branch's
 * cursor, within a window of unacknowledged batches.
 */
import { create, toBinary } from "@bufbuild/protobuf";
import type pg from "pg";
import { randomUUID } from "node:crypto";
import {
  HubMessageSchema, TransactionSchema, Outcome, type AgentMessage, type HubMessage,
  type Hello, type ChangeBatch, type Transaction,
} from "../../gen/branchsync/v1/sync_pb.ts";
import { Status, StatusError, toPublicError, type PublicError } from "../errors.ts";
import { msSince, type Logger } from "../../lib/log.ts";
import type { Identity } from "../auth/tokens.ts";
import { tenantSchema, branchExists } from "../store/tenants.ts";
import { ensureTenantCurrent } from "../store/migrate.ts";
import { registerTables, type TableDef } from "../store/tables.ts";
import { appendBatch, readHead, type AppendOutcome } from "../store/log.ts";
import type { LogReader } from "./sharedReads.ts";
import { checkTransaction, batchSize } from "./validate.ts";
import { withOriginBranch, encodeBatchAck, type DecodedTxn } from "../../lib/protowire.ts";
import type { Feed } from "./feed.ts";
import { MAX_MESSAGE_BYTES } from "../../lib/wire.ts";
import { metrics } from "../metrics.ts";
import { hlcMs, hlcOf } from "../../lib/hlc.ts";
import { loadPolicies } from "../store/policies.ts";
import { makeDownstream, type Downstream } from "./downstream.ts";
import { makeQuarantineDesk, type QuarantineDesk } from "./quarantine.ts";

export interface SessionLimits {
  maxBatchChanges: number;
  heartbeatMs: number;
  /** Upstream batches an agent may have outstanding before it is told to slow down. */
  maxUpstreamQueue: number;
  downstreamWindow: number;
  /** How far ahead of the hub's clock an incoming HLC may be. */
  maxClockSkewMs: number;
}

export const DEFAULT_LIMITS: SessionLimits = {
  maxBatchChanges: 2000, heartbeatMs: 15_000, maxUpstreamQueue: 16, downstreamWindow: 2, maxClockSkewMs: 60_000,
};

export interface SessionIO {
  /** Resolves once the transport accepted the message (backpressure). Buffers are pre-encoded HubMessages. */
  send(m: HubMessage | Buffer): Promise<void>;
  /** Ends the stream, with an error status or OK. */
  close(err?: PublicError): void;
}

export interface SessionDeps {
  pool: pg.Pool;
  /** Reads the log after a position; shared between sessions (sharedReads.ts). */
  logReader: LogReader;
  feed: Feed;
  publish(tenantId: string, seq: bigint): void;
  log: Logger;
  limits: SessionLimits;
}

export interface Session {
  readonly id: string;
  readonly identity: Identity;
  onMessage(m: AgentMessage): void;
  /** The transport ended (client closed or network dropped). */
  onEnd(): void;
  drain(reason: string): void;
  info(): { id: string; tenantId: string; branchId: string; sentSeq: bigint; ackedSeq: bigint; startedAt: Date };
}

export function startSession(identity: Identity, deps: SessionDeps, io: SessionIO): Session {
  const id = randomUUID();
  const log = deps.log.child({ session: id, tenant: identity.tenantId, branch: identity.branchId });
  const schema = tenantSchema(identity.tenantId);
  const abort = new AbortController();
  const startedAt = new Date();
  let tables: Map<string, TableDef> | null = null;
  let helloSeen = false;
  let upstream: Promise<void> = Promise.resolve();
  let queued = 0;
  let lastHeard = Date.now();
  let heartbeat: NodeJS.Timeout | null = null;
  let expiry: NodeJS.Timeout | null = null;
  let closed = false;
  metrics.sessions.inc();
  const quarantine: QuarantineDesk = makeQuarantineDesk({
    pool: deps.pool, schema, branch: identity.branchId, log, signal: abort.signal, send: (m) => send(m),
  });
  const downstream: Downstream = makeDownstream({
    pool: deps.pool, logReader: deps.logReader, feed: deps.feed, log, schema, tenantId: identity.tenantId, branchId: identity.branchId,
    maxBatchChanges: deps.limits.maxBatchChanges, window: deps.limits.downstreamWindow, signal: abort.signal,
    send: (m) => (closed ? Promise.resolve() : io.send(m)),
  });

  const fail = (err: unknown) => {
    if (closed) return;
    const pe = toPublicError(err, log);
    log.info({ code: pe.code, msg: pe.message }, "session ends with error");
    finish(pe);
  };

  function finish(err?: PublicError) {
    if (closed) return;
    closed = true;
    abort.abort();
    if (heartbeat) clearInterval(heartbeat);
    if (expiry) clearTimeout(expiry);
    metrics.sessions.dec();
    downstream.flushCursor();
    io.close(err);
  }

  const send = (m: HubMessage | Buffer) => (closed ? Promise.resolve() : io.send(m));

  async function onHello(h: Hello) {
    if (h.expectedTenantId && h.expectedTenantId !== identity.tenantId) {
      throw new StatusError(Status.PERMISSION_DENIED, "the token is not for the tenant this agent is configured for; use the API key of this branch");
    }
    if (h.expectedBranchId && h.expectedBranchId !== identity.branchId) {
      throw new StatusError(Status.PERMISSION_DENIED, "the token is not for the branch this agent is configured for; use the API key of this branch");
    }
    if (!(await branchExists(deps.pool, identity.tenantId, identity.branchId))) {
      throw new StatusError(Status.PERMISSION_DENIED, "the branch of this token no longer exists");
    }
    if (h.tables.length === 0) throw new StatusError(Status.INVALID_ARGUMENT, "Hello must declare at least one tracked table");
    await ensureTenantCurrent(deps.pool, identity.tenantId);
    tables = await registerTables(deps.pool, schema, identity.branchId, h.tables.map((t) => ({
      name: t.name, columns: t.columns.map((c) => ({ name: c.name, type: c.type, nullable: c.nullable })), primaryKey: [...t.primaryKey],
    })));
    const head = await readHead(deps.pool, schema);
    deps.feed.advance(identity.tenantId, head);
    if (h.resumeCursor > head) {
      throw new StatusError(Status.FAILED_PRECONDITION,
        `resume cursor ${h.resumeCursor} is ahead of the tenant log head ${head}; was the hub database restored from an older backup?`);
    }
    await send(create(HubMessageSchema, { payload: { case: "welcome", value: {
      sessionId: id, tenantId: identity.tenantId, branchId: identity.branchId, headSeq: head, resumeFrom: h.resumeCursor,
      maxBatchChanges: deps.limits.maxBatchChanges, maxMessageBytes: MAX_MESSAGE_BYTES, heartbeatIntervalMs: deps.limits.heartbeatMs,
    } } }));
    log.info({ agent: h.agentVersion, resume: h.resumeCursor.toString(), head: head.toString() }, "session started");
    heartbeat = setInterval(beat, deps.limits.heartbeatMs);
    if (identity.expiresAt) {
      // A session lives no longer than its token: the agent reconnects with
      // a fresh one, so a revoked key stops syncing within a token lifetime.
      const ms = Math.max(0, identity.expiresAt * 1000 - Date.now());
      expiry = setTimeout(() => session.drain("access token expired; reconnect with a fresh token"), Math.min(ms, 2 ** 31 - 1));
    }
    downstream.run(h.resumeCursor).catch(fail);
    quarantine.start().catch(fail);
  }

  function beat() {
    if (Date.now() - lastHeard > 3 * deps.limits.heartbeatMs) {
      fail(new StatusError(Status.UNAVAILABLE, "no message from the agent for three heartbeat intervals"));
      return;
    }
    send(create(HubMessageSchema, { payload: { case: "ping", value: { nonce: BigInt(Date.now()), sentAtUs: BigInt(Date.now()) * 1000n } } })).catch(fail);
  }

  async function onChanges(b: ChangeBatch) {
    if (!tables) throw new StatusError(Status.FAILED_PRECONDITION, "send Hello before changes");
    const n = batchSize(b);
    if (n > deps.limits.maxBatchChanges) {
      throw new StatusError(Status.INVALID_ARGUMENT, `batch has ${n} changes; the limit is ${deps.limits.maxBatchChanges} (send large transactions in chunks)`);
    }
    const outcomes: (AppendOutcome | null)[] = [];
    const valid: { t: Transaction; body: Uint8Array }[] = [];
    for (const t of b.transactions) {
      const err = checkTransaction(t, tables);
      if (err) { outcomes.push({ kind: "rejected", error: err }); continue; }
      // The origin is the session's branch, whatever the message said: the
      // stored bytes end with it (for a repeated scalar field the last wins).
      const raw = (t as Partial<DecodedTxn>).raw;
      if (raw) {
        valid.push({ t, body: withOriginBranch(raw, identity.branchId) });
      } else {
        t.originBranch = identity.branchId;
        t.seq = 0n;
        valid.push({ t, body: toBinary(TransactionSchema, t) });
      }
      outcomes.push(null);
    }
    const now = Date.now();
    for (const { t } of valid) {
      const ahead = hlcMs(t.hlc) - now;
      if (ahead > deps.limits.maxClockSkewMs) {
        // Refusing the batch (not the transactions) keeps them at the branch
        // until its clock is fixed: nothing is lost, and a fast clock never
        // gets to win conflicts with timestamps from the future.
        throw new StatusError(Status.FAILED_PRECONDITION,
          `this branch's clock is ${Math.round(ahead / 1000)} s ahead of the hub's (at most ${Math.round(deps.limits.maxClockSkewMs / 1000)} s allowed); fix the branch's clock (NTP). Its changes wait at the branch until then`);
      }
    }
    const received = performance.now();
    const policies = valid.length === 0 ? new Map() : await loadPolicies(deps.pool, schema);
    const res = valid.length === 0 ? { outcomes: [], head: 0n, conflicts: [] } : await appendBatch(deps.pool, schema, identity.branchId,
      valid.map(({ t, body }) => ({
        originTxn: t.originTxn, chunkIndex: t.chunkIndex, lastChunk: t.lastChunk, nChanges: t.changes.length, body,
        changes: t.changes, baseSeq: t.baseSeq, hlc: t.hlc === 0n ? hlcOf(now) : t.hlc,
      })), policies);
    if (log.isLevelEnabled("debug")) {
      log.debug({ batch: b.batchId.toString(), txns: valid.length, appendMs: msSince(received) }, "appended batch");
    }
    for (const c of res.conflicts) metrics.conflicts.inc({ tenant: identity.tenantId, table: c.table, strategy: c.strategy }, c.n);
    let j = 0;
    const final = outcomes.map((o) => o ?? res.outcomes[j++]);
    downstream.noteAppended(valid, res);
    if (res.outcomes.some((o) => o.kind === "accepted")) {
      deps.feed.advance(identity.tenantId, res.head);
      deps.publish(identity.tenantId, res.head);
    }
    metrics.changesIn.inc(valid.reduce((s, v) => s + (v.t.lastChunk ? v.t.changes.length : 0), 0));
    metrics.batchesIn.inc();
    await send(encodeBatchAck(b.batchId, final.map((o, i) => ({
      originTxn: b.transactions[i].originTxn, chunkIndex: b.transactions[i].chunkIndex,
      outcome: o.kind === "accepted" ? Outcome.ACCEPTED : o.kind === "duplicate" ? Outcome.DUPLICATE : o.kind === "staged" ? Outcome.STAGED : Outcome.REJECTED,
      seq: o.kind === "accepted" || o.kind === "duplicate" ? o.seq : 0n,
      error: o.kind === "rejected" ? o.error : "",
    }))));
  }

  function handle(m: AgentMessage) {
    lastHeard = Date.now();
    const p = m.payload;
    switch (p.case) {
      case "hello":
        if (helloSeen) throw new StatusError(Status.INVALID_ARGUMENT, "Hello may only be sent once, as the first message");
        helloSeen = true;
        upstream = upstream.then(() => onHello(p.value));
        upstream.catch(fail);
        return;
      case "changes": {
        if (!helloSeen) throw new StatusError(Status.FAILED_PRECONDITION, "send Hello before changes");
        if (queued >= deps.limits.maxUpstreamQueue) {
          throw new StatusError(Status.RESOURCE_EXHAUSTED,
            `more than ${deps.limits.maxUpstreamQueue} change batches awaiting ack; wait for BatchAcks before sending more`, 1000);
        }
        queued++;
        upstream = upstream.then(() => onChanges(p.value)).finally(() => { queued--; });
        upstream.catch(fail);
        return;
      }
      case "ack":
        if (!helloSeen) throw new StatusError(Status.FAILED_PRECONDITION, "send Hello before acks");
        downstream.onAck(p.value.cursor);
        return;
      case "ping":
        send(create(HubMessageSchema, { payload: { case: "pong", value: { nonce: p.value.nonce, sentAtUs: p.value.sentAtUs } } })).catch(fail);
        return;
      case "pong":
        metrics.heartbeatRtt.observe(Math.max(0, Date.now() * 1000 - Number(p.value.sentAtUs)) / 1e6);
        return;
      case "nack": {
        if (!helloSeen) throw new StatusError(Status.FAILED_PRECONDITION, "send Hello before a Nack");
        const n = p.value;
        upstream = upstream.then(() => quarantine.onNack(n));
        upstream.catch(fail);
        return;
      }
      case "quarantineResult": {
        if (!helloSeen) throw new StatusError(Status.FAILED_PRECONDITION, "send Hello before a QuarantineResult");
        const r = p.value;
        upstream = upstream.then(() => quarantine.onResult(r));
        upstream.catch(fail);
        return;
      }
      default:
        throw new StatusError(Status.INVALID_ARGUMENT, "empty AgentMessage: set one payload");
    }
  }

  const session: Session = {
    id,
    identity,
    onMessage(m) {
      if (closed) return;
      try { handle(m); } catch (e) { fail(e); }
    },
    onEnd() {
      // The agent went away; wait for the batch in progress so its outcome is
      // durable before we stop (it is idempotent anyway).
      upstream.finally(() => finish());
    },
    drain(reason) {
      send(create(HubMessageSchema, { payload: { case: "drain", value: { reason, reconnectAfterMs: 100 } } }))
        .then(() => upstream).finally(() => finish()).catch(() => undefined);
    },
    info: () => ({ id, tenantId: identity.tenantId, branchId: identity.branchId, ...downstream.position(), startedAt }),
  };
  return session;
}
