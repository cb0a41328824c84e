/**
 * One SyncStream session from the agent's side: Hello/Welcome, then the
 * upstream sender and the downstream applier run side by side until the
 * stream ends. Everything not acknowledged is simply sent again by the next
 * session (the hub deduplicates), so ending a session never loses data.
 */
import type pg from "pg";
import * as grpc from "@grpc/grpc-js";
import { create } from "@bufbuild/protobuf";
import {
  AgentMessageSchema, Outcome, QuarantineOutcome, QuarantineVerb, type HubMessage, type AgentMessage, type BatchAck, type ChangeBatch,
  type ConflictNotice, type QuarantineAction,
} from "../../gen/branchsync/v1/sync_pb.ts";
import { openSyncStream, MAX_MESSAGE_BYTES, type AgentCall } from "../../lib/wire.ts";
import { encodeUpstreamBatch, encodeAck } from "../../lib/protowire.ts";
import { msSince, type Logger } from "../../lib/log.ts";
import type { LocalTable } from "../capture/introspect.ts";
import { readBatch, setAside, type Chunking } from "../capture/reader.ts";
import { CURSOR_MOVED_SQLSTATE } from "../capture/install.ts";
import type { Applier, Quarantined } from "../apply/applier.ts";
import type { Clock } from "../capture/clock.ts";

export interface SessionEnv {
  pool: pg.Pool;
  client: grpc.Client;
  tables: LocalTable[];
  tenantId: string;
  branchId: string;
  batchMaxChanges: number;
  batchLingerMs: number;
  pollMs: number;
  applier: Applier;
  clock: Clock;
  log: Logger;
  /** Resolves when the local change log may have grown (NOTIFY) since `since` (a localMark()), or on timeout. */
  waitLocal(timeoutMs: number, abort: AbortSignal, since: number): Promise<void>;
  localMark(): number;
  onCursor(cursor: bigint): void;
  onConflict?(n: ConflictNotice): void;
  /** Aborted when the agent stops: the session cancels its stream. */
  stopping: AbortSignal;
  /**
   * Subscribes to the branch database's connection coming back after it was
   * lost (returns the unsubscribe). A crash undoes the last applies
   * committed without waiting for their flush, cursor and all; this
   * session's position downstream is then ahead of the database, and only a
   * new session, resuming from the cursor the database kept, gets those
   * changes sent again (invariant 1). The applier's cursor check
   * (Applier.resume) stops the session at its next apply anyway: this is
   * for a branch that receives nothing more for a while.
   */
  onLocalBack?(f: () => void): () => void;
}

/** Upstream batches in flight at once: enough to hide a round trip. */
const UPSTREAM_WINDOW = 2;
/** Downstream batches buffered before we pause reading from the socket. */
const APPLY_QUEUE_HIGH = 4;

export interface SessionResult { established: boolean; error?: grpc.ServiceError }

export async function runSession(env: SessionEnv, token: string, version: string): Promise<SessionResult> {
  const cursorRow = await env.pool.query("SELECT cursor FROM _branchsync.state");
  env.applier.resume(BigInt(cursorRow.rows[0].cursor));
  // No await between opening the call and attaching its listeners: an
  // 'error' emitted with no listener would crash the agent.
  const call: AgentCall = openSyncStream(env.client, token, env.tenantId);
  const ended = new Promise<grpc.ServiceError | undefined>((resolve) => {
    call.on("error", (e: grpc.ServiceError) => resolve(e));
    call.on("end", () => resolve(undefined));
  });
  const abort = new AbortController();
  const send = (m: AgentMessage | Buffer) => { if (!abort.signal.aborted) call.write(m); };
  const log = env.log;
  let established = false;
  let heartbeatMs = 15_000;
  let lastHeard = Date.now();
  let nextBatchId = 1n;
  /** Upstream batches sent and not yet acked. */
  const awaiting = new Set<bigint>();
  const inFlight = new Set<string>();
  let chunking: Chunking | null = null;
  let wakeSender: (() => void) | null = null;
  const wakeUp = () => { const w = wakeSender; wakeSender = null; w?.(); };
  const applyQueue: ChangeBatch[] = [];
  /** Operator requests; run between batches, never inside an open chunked transaction. */
  const actions: QuarantineAction[] = [];
  /**
   * BatchAck bookkeeping (moving rejected transactions aside). It changes
   * _branchsync.txns, as applying does; run from the apply loop between
   * batches, the two never hold each other's row locks (two connections
   * updating the same rows in different orders deadlocked).
   */
  const jobs: (() => Promise<void>)[] = [];
  let applying = false;
  let fatal: Error | null = null;

  send(create(AgentMessageSchema, { payload: { case: "hello", value: {
    agentVersion: version, resumeCursor: BigInt(cursorRow.rows[0].cursor),
    expectedTenantId: env.tenantId, expectedBranchId: env.branchId,
    tables: env.tables.map((t) => ({ name: t.name, columns: t.columns, primaryKey: t.primaryKey })),
  } } }));

  const stop = (why: Error) => {
    if (abort.signal.aborted) return;
    fatal ??= why;
    abort.abort();
    wakeUp();
    call.cancel();
  };

  /**
   * A BatchAck frees its window slot at once. Accepted transactions stay in
   * `inFlight` (so they are not read again) until the hub reports their
   * sequence numbers downstream (ChangeBatch.own_sequenced), which the
   * applier records in the same local transaction as the cursor: one
   * statement for many transactions, instead of an UPDATE per ack. After a
   * reconnect, what was acked but not yet reported is sent again and comes
   * back DUPLICATE, then reported like the rest.
   */
  function onBatchAck(a: BatchAck) {
    if (!awaiting.delete(a.batchId)) throw new Error(`BatchAck for unknown batch ${a.batchId}`);
    const rejected = a.outcomes.filter((o) => o.outcome === Outcome.REJECTED);
    for (const o of rejected) if (chunking?.txid === o.originTxn.toString()) chunking = null;
    if (rejected.length > 0) jobs.push(() => setRejectedAside(rejected));
    wakeUp();
  }

  async function setRejectedAside(rejected: BatchAck["outcomes"]) {
    for (const o of rejected) {
      const txid = o.originTxn.toString();
      log.error({ txid, error: o.error }, "hub rejected a local transaction; moved to _branchsync.rejected");
      await setAside(env.pool, txid, o.error);
      inFlight.delete(txid);
    }
    wakeUp();
  }

  /**
   * Batches keep to BATCH_CHARS, so only a single change can outgrow a
   * message: a row that can never be sent. Its transaction is moved aside
   * like one the hub rejected, or it would hold back every later one.
   */
  async function setAsideTooLarge(txns: { originTxn: bigint; changes: { table: string }[] }[], bytes: number) {
    if (txns.length !== 1 || txns[0].changes.length !== 1) {
      throw new Error(`an upstream batch of ${bytes} bytes (${txns.length} transactions) is over the ${MAX_MESSAGE_BYTES}-byte message limit: a bug in batching`);
    }
    const txid = txns[0].originTxn.toString();
    const error = `a row of ${txns[0].changes[0].table} takes ${bytes} bytes, more than one SyncStream message carries (${MAX_MESSAGE_BYTES}); its transaction cannot be synced`;
    log.error({ txid, bytes }, `${error}; moved to _branchsync.rejected`);
    await setAside(env.pool, txid, error);
  }

  /** Most changes per upstream batch: ours, or the hub's (Welcome) if lower. */
  let maxChanges = env.batchMaxChanges;

  /** Own transactions reported in batches applied but not yet committed (an open chunked transaction). */
  let reportedUncommitted: string[] = [];

  async function sender() {
    /** The previous read took everything committed and was not full. */
    let lastPartial = false;
    while (!abort.signal.aborted) {
      if (awaiting.size >= UPSTREAM_WINDOW) { await new Promise<void>((r) => { wakeSender = r; }); wakeSender = null; continue; }
      if (lastPartial && !chunking && awaiting.size > 0 && env.batchLingerMs > 0) {
        // The hub appends a branch's batches one after another, so what
        // commits while a batch is on its way would only queue behind it:
        // it waits for that batch's ack (or the linger) and goes as one
        // batch, which costs every process on the way once instead of per
        // commit (a tenth of W1's CPU at 5 ms). Full batches do not wait.
        await Promise.race([new Promise((r) => setTimeout(r, env.batchLingerMs)), new Promise<void>((r) => { wakeSender = r; })]);
        wakeSender = null;
        lastPartial = false;
        continue;
      }
      const mark = env.localMark();
      const readStart = performance.now();
      const batch = await readBatch(env.pool, [...inFlight], maxChanges, chunking, env.clock);
      if (abort.signal.aborted) return;
      // Also when nothing came: a large transaction whose chunks were being
      // sent may be gone meanwhile (the hub had it whole, reported it DUPLICATE
      // and the cursor passed it), and reading its next chunk would find
      // nothing for ever. Then the other pending transactions are read at once.
      const wasChunking = chunking !== null;
      chunking = batch.chunking;
      if (batch.transactions.length === 0 && wasChunking) continue;
      if (batch.transactions.length === 0) {
        await Promise.race([env.waitLocal(env.pollMs, abort.signal, mark), new Promise<void>((r) => { wakeSender = r; })]);
        wakeSender = null;
        continue;
      }
      const n = batch.transactions.reduce((s, t) => s + t.changes.length, 0);
      lastPartial = !batch.more && !batch.chunking && n < maxChanges;
      const id = nextBatchId++;
      // The txid list costs a string per transaction: only when someone reads it.
      // readMs and the send time split a change's path (bench latency's legTimelineMs has the txids).
      if (log.isLevelEnabled("debug")) {
        log.debug({ batch: id.toString(), readMs: msSince(readStart),
          txns: batch.transactions.map((t) => `${t.originTxn}#${t.chunkIndex}${t.lastChunk ? "L" : ""}:${t.changes.length}`) }, "sending batch");
      }
      const message = encodeUpstreamBatch(id, batch.transactions);
      if (message.length > MAX_MESSAGE_BYTES) {
        await setAsideTooLarge(batch.transactions, message.length);
        chunking = null;
        continue;
      }
      for (const t of batch.transactions) inFlight.add(t.originTxn.toString());
      awaiting.add(id);
      if (!abort.signal.aborted) call.write(message);
      // Everything committed was taken: read again only once something new
      // commits (the mark predates the read, so no commit is missed). This
      // spares a busy branch an empty read after every batch.
      if (!batch.more) await env.waitLocal(env.pollMs, abort.signal, mark);
    }
  }

  let applyRun: Promise<void> = Promise.resolve();
  /** When each downstream batch arrived, for the debug log only. */
  const receivedAt = new WeakMap<ChangeBatch, number>();
  function applier() {
    if (applying) return;
    applying = true;
    applyRun = applyLoop();
  }

  /** NACKs go out after the quarantine is committed; `reported` keeps one that did not for the next session. */
  async function nack(items: Quarantined[]) {
    for (const q of items) {
      log.warn({ seq: q.seq.toString(), origin: q.originBranch, sqlstate: q.sqlstate, error: q.error }, "quarantined a transaction this branch cannot apply");
      send(create(AgentMessageSchema, { payload: { case: "nack", value: q } }));
    }
    if (items.length > 0) {
      await env.pool.query("UPDATE _branchsync.quarantine SET reported = true WHERE seq = ANY($1::bigint[])", [items.map((q) => q.seq.toString())]);
    }
  }

  async function act(a: QuarantineAction) {
    const r = a.verb === QuarantineVerb.RETRY && a.repair
      ? await env.applier.retry(a.seq, a.repair)
      : a.verb === QuarantineVerb.DISCARD ? await env.applier.discard(a.seq) : { outcome: "failed" as const, error: "unknown quarantine action" };
    log.info({ seq: a.seq.toString(), outcome: r.outcome }, "quarantine action done");
    send(create(AgentMessageSchema, { payload: { case: "quarantineResult", value: {
      seq: a.seq,
      outcome: r.outcome === "applied" ? QuarantineOutcome.APPLIED : r.outcome === "discarded" ? QuarantineOutcome.DISCARDED : QuarantineOutcome.FAILED,
      error: r.outcome === "failed" ? r.error : "",
    } } }));
  }

  async function applyLoop() {
    try {
      const between = () => (jobs.length > 0 || actions.length > 0) && !env.applier.busy();
      while ((applyQueue.length > 0 || between()) && !abort.signal.aborted) {
        if (jobs.length > 0 && !env.applier.busy()) { await jobs.shift()!(); continue; }
        if (actions.length > 0 && !env.applier.busy()) { await act(actions.shift()!); continue; }
        const b = applyQueue.shift()!;
        if (applyQueue.length < APPLY_QUEUE_HIGH / 2) call.resume();
        const queuedMs = log.isLevelEnabled("debug") ? msSince(receivedAt.get(b) ?? performance.now()) : 0;
        const started = performance.now();
        const { cursor, quarantined } = await env.applier.apply(b);
        if (log.isLevelEnabled("debug")) {
          log.debug({ batch: b.batchId.toString(), cursor: b.cursorAfter.toString(), queuedMs, applyMs: msSince(started) }, "applied batch");
        }
        for (const o of b.ownSequenced ?? []) reportedUncommitted.push(o.originTxn.toString());
        await nack(quarantined);
        if (cursor !== null) {
          for (const txid of reportedUncommitted) inFlight.delete(txid);
          reportedUncommitted = [];
          env.onCursor(cursor);
          send(encodeAck(cursor));
        }
      }
    } catch (e) {
      if ((e as { code?: unknown }).code === CURSOR_MOVED_SQLSTATE) log.warn((e as Error).message);
      else log.error({ err: e }, "applying changes from the hub (or recording what the hub acked) failed; will reconnect and retry from the durable cursor");
      stop(e as Error);
    } finally {
      applying = false;
    }
  }

  async function unreported(): Promise<Quarantined[]> {
    const { rows } = await env.pool.query(
      "SELECT seq::text AS seq, origin_branch, origin_txn::text AS txn, error, sqlstate FROM _branchsync.quarantine WHERE NOT reported ORDER BY seq");
    return rows.map((r) => ({ seq: BigInt(r.seq), originBranch: r.origin_branch, originTxn: BigInt(r.txn), error: r.error, sqlstate: r.sqlstate }));
  }

  const onStopping = () => stop(new Error("agent stopping"));
  if (env.stopping.aborted) onStopping();
  env.stopping.addEventListener("abort", onStopping, { once: true });
  const unsubscribeBack = env.onLocalBack?.(() => {
    const at = env.applier.position();
    env.pool.query("SELECT cursor FROM _branchsync.state").then(({ rows }) => {
      const kept = BigInt(rows[0].cursor);
      // Applies only move it forward: lower means a restart took some back.
      if (at === null || kept >= at || abort.signal.aborted) return;
      log.warn({ kept: kept.toString(), applied: at.toString() }, "the branch database restarted and kept an older cursor than this session applied: starting again from it");
      stop(new Error("the branch database lost applied batches in a restart"));
    }, (e) => { log.warn({ err: (e as Error).message }, "reading the cursor after the branch database came back failed; starting again"); stop(e as Error); });
  });

  const heartbeat = setInterval(() => {
    if (Date.now() - lastHeard > 3 * heartbeatMs) stop(new Error("hub silent for three heartbeat intervals"));
  }, 1000);

  call.on("data", (m: HubMessage) => {
    if (abort.signal.aborted) return;
    lastHeard = Date.now();
    const p = m.payload;
    switch (p.case) {
      case "welcome":
        established = true;
        heartbeatMs = p.value.heartbeatIntervalMs || heartbeatMs;
        log.info({ session: p.value.sessionId, head: p.value.headSeq.toString(), resume: p.value.resumeFrom.toString() }, "connected to hub");
        // The hub refuses larger batches: its limit wins over ours.
        if (p.value.maxBatchChanges > 0 && p.value.maxBatchChanges < maxChanges) maxChanges = p.value.maxBatchChanges;
        sender().catch((e) => { log.error({ err: e }, "sending local changes failed"); stop(e); });
        unreported().then(nack).catch((e) => { log.error({ err: e }, "reporting quarantined transactions failed"); stop(e); });
        return;
      case "changes":
        if (log.isLevelEnabled("debug")) receivedAt.set(p.value, performance.now());
        applyQueue.push(p.value);
        if (applyQueue.length >= APPLY_QUEUE_HIGH) call.pause();
        applier();
        return;
      case "batchAck":
        try { onBatchAck(p.value); } catch (e) { stop(e as Error); return; }
        applier();
        return;
      case "ping":
        send(create(AgentMessageSchema, { payload: { case: "pong", value: { nonce: p.value.nonce, sentAtUs: p.value.sentAtUs } } }));
        return;
      case "drain":
        log.info({ reason: p.value.reason }, "hub asked us to reconnect");
        call.end();
        return;
      case "conflict":
        log.info({ table: p.value.table, key: p.value.key, kind: p.value.kind, strategy: p.value.strategy, winner: p.value.winnerBranch,
          conflict: p.value.conflictId.toString() }, "conflict notice: a change of this branch did not win");
        env.onConflict?.(p.value);
        return;
      case "quarantineAction":
        actions.push(p.value);
        applier();
        return;
      default:
        return;
    }
  });

  const err = await ended;
  clearInterval(heartbeat);
  env.stopping.removeEventListener("abort", onStopping);
  unsubscribeBack?.();
  abort.abort();
  wakeUp();
  await applyRun;
  await env.applier.abort();
  if (fatal && !err) return { established, error: undefined };
  return { established, error: err };
}
