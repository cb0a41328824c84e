/**
 * The downstream half of a session: sends a branch the tenant log after its
 * cursor, in order, forever. At most `downstreamWindow` batches are
 * unacknowledged and every send waits on transport backpressure, so a slow
 * branch costs the hub a bounded amount of memory.
 *
 * A branch's own entries are not sent back (they are reported as
 * own_sequenced), unless conflicts were decided in them. Entries the same
 * session has just appended are passed over without reading them.
 */
import { create } from "@bufbuild/protobuf";
import type pg from "pg";
import { HubMessageSchema, type HubMessage, type Transaction } from "../../gen/branchsync/v1/sync_pb.ts";
import { Status, StatusError } from "../errors.ts";
import type { Logger } from "../../lib/log.ts";
import { saveCursor, type AppendOutcome, type LogEntry } from "../store/log.ts";
import { noticesFor } from "../store/conflicts.ts";
import { AFTER_ALL_PARTS, type LogReader } from "./sharedReads.ts";
import { encodeChangeBatch, type StoredTxn, type OwnSeq } from "./encode.ts";
import type { Feed } from "./feed.ts";
import { MAX_MESSAGE_BYTES } from "../../lib/wire.ts";
import { metrics } from "../metrics.ts";

/** Own transactions reported to a branch at the latest after this many. */
const OWN_BATCH = 256;
/** ... or after this long; only own-transaction cursor moves wait for it. */
const OWN_ONLY_EVERY_MS = 200;
/** Entries read from the log at a time. */
const READ_LIMIT = 64;
/** Acked cursors are saved at most this often (an ack is not durable progress; the branch's own cursor is). */
const SAVE_CURSOR_EVERY_MS = 1000;

export interface DownstreamDeps {
  pool: pg.Pool;
  logReader: LogReader;
  feed: Feed;
  log: Logger;
  schema: string;
  tenantId: string;
  branchId: string;
  maxBatchChanges: number;
  window: number;
  /** Sends a message or a pre-encoded HubMessage; resolves on transport backpressure. */
  send(m: HubMessage | Buffer): Promise<void>;
  signal: AbortSignal;
}

export interface Downstream {
  /** Runs until the signal aborts; starts after `cursor`. */
  run(cursor: bigint): Promise<void>;
  /** The branch applied everything up to `cursor`. */
  onAck(cursor: bigint): void;
  /** This session appended `txns` with these outcomes. */
  noteAppended(txns: { t: Transaction; body: Uint8Array }[], res: { outcomes: AppendOutcome[]; plain?: boolean }): void;
  /** Saves the acked cursor now (on close). */
  flushCursor(): void;
  position(): { sentSeq: bigint; ackedSeq: bigint };
}

export function makeDownstream(d: DownstreamDeps): Downstream {
  let sentSeq = 0n;
  let sentPart = AFTER_ALL_PARTS;
  let ackedSeq = 0n;
  let lastComplete = 0n;
  /** The cursor of the newest batch sent; `inFlight` holds those not acked yet. */
  let advertised = 0n;
  const inFlight: bigint[] = [];
  let ackWake: (() => void) | null = null;
  let cursorTimer: NodeJS.Timeout | null = null;
  let savedCursor = -1n;
  let started = false;
  /** Own transactions passed over since the last batch; they ride on the next one. */
  let ownSequenced: OwnSeq[] = [];
  /** This session's plain appends, which the pump passes over without reading them back. */
  let ownAppends: { first: bigint; txns: bigint[] }[] = [];

  d.signal.addEventListener("abort", () => ackWake?.(), { once: true });

  function flushCursor() {
    if (ackedSeq === savedCursor || !started) return;
    const v = ackedSeq;
    saveCursor(d.pool, d.schema, d.branchId, v).then(() => { savedCursor = v; })
      .catch((err) => d.log.warn({ err }, "could not save branch cursor"));
  }

  /** Passes over own appends that come next in the log; true if it did. */
  function passOwnAppends(): boolean {
    ownAppends = ownAppends.filter((a) => a.first + BigInt(a.txns.length) - 1n > sentSeq);
    const a = ownAppends[0];
    if (!a || sentPart !== AFTER_ALL_PARTS || a.first !== sentSeq + 1n) return false;
    ownAppends.shift();
    a.txns.forEach((originTxn, i) => ownSequenced.push({ originTxn, seq: a.first + BigInt(i) }));
    sentSeq = lastComplete = a.first + BigInt(a.txns.length) - 1n;
    return true;
  }

  async function sendBatch(txns: StoredTxn[], cursorAfter: bigint, changes = 0) {
    if (cursorAfter > advertised) {
      inFlight.push(cursorAfter);
      advertised = cursorAfter;
    }
    metrics.changesOut.inc(changes);
    const own = ownSequenced;
    ownSequenced = [];
    if (!d.signal.aborted) await d.send(encodeChangeBatch(txns, cursorAfter, own));
  }

  /** Tells the branch about conflicts it lost (or that merged its change) in these entries. */
  async function sendNotices(seqs: bigint[]) {
    for (const c of await noticesFor(d.pool, d.schema, d.branchId, seqs)) {
      await d.send(create(HubMessageSchema, { payload: { case: "conflict", value: {
        table: c.table, key: c.key, winnerRow: c.resultRow ?? "", loserRow: (c.loserBranch === c.incomingBranch ? c.incomingRow : c.existingRow) ?? "",
        strategy: c.strategy, winnerBranch: c.winnerBranch, reason: c.reason, seq: c.seq, conflictId: c.id!, kind: c.kind,
      } } }));
    }
  }

  /** What to send of `entries`; moves the read position past what it takes. */
  function take(entries: LogEntry[]) {
    const txns: StoredTxn[] = [];
    const decided: bigint[] = [];
    let changes = 0;
    let bytes = 0;
    for (const e of entries) {
      const own = e.originBranch === d.branchId;
      // Own entries are skipped unless conflicts were decided in them: then
      // they hold resolved rows the branch does not have yet.
      if (!own || e.conflicts > 0) {
        if (txns.length > 0 && (changes + e.nChanges > d.maxBatchChanges || bytes + e.body.length > MAX_MESSAGE_BYTES / 2)) break;
        txns.push({ seq: e.seq, body: e.body });
        changes += e.nChanges;
        bytes += e.body.length;
        if (e.conflicts > 0 && decided.at(-1) !== e.seq) decided.push(e.seq);
      }
      if (own && e.lastPart) ownSequenced.push({ originTxn: e.originTxn, seq: e.seq });
      sentSeq = e.seq;
      sentPart = e.part;
      if (e.lastPart) { lastComplete = e.seq; sentPart = AFTER_ALL_PARTS; }
    }
    return { txns, decided, changes };
  }

  async function readNext(): Promise<LogEntry[] | null> {
    if (passOwnAppends()) return d.feed.known(d.tenantId) > sentSeq ? null : [];
    // Past the known head there is nothing to read; the feed wakes us.
    if (sentPart === AFTER_ALL_PARTS && d.feed.known(d.tenantId) <= sentSeq) return [];
    return d.logReader.read(d.schema, sentSeq, sentPart, READ_LIMIT);
  }

  let lastOwnOnly = 0;
  /** Nothing to send: move the cursor past own transactions now and then, else wait for the log to grow. */
  async function idle() {
    if (lastComplete > advertised) {
      // Only the branch's own transactions were passed over: move its
      // cursor, but not for every commit of a busy writer.
      if (ownSequenced.length < OWN_BATCH && Date.now() - lastOwnOnly < OWN_ONLY_EVERY_MS) {
        await d.feed.wait(d.tenantId, sentSeq, d.signal, OWN_ONLY_EVERY_MS);
        return;
      }
      lastOwnOnly = Date.now();
      await sendBatch([], lastComplete);
      return;
    }
    await d.feed.wait(d.tenantId, sentSeq, d.signal);
  }

  return {
    async run(cursor) {
      sentSeq = ackedSeq = lastComplete = advertised = cursor;
      started = true;
      while (!d.signal.aborted) {
        if (inFlight.length >= d.window) {
          await new Promise<void>((r) => { ackWake = r; });
          ackWake = null;
          continue;
        }
        const entries = await readNext();
        if (d.signal.aborted) return;
        if (entries === null) continue;
        if (entries.length === 0) { await idle(); continue; }
        const { txns, decided, changes } = take(entries);
        if (txns.length > 0) {
          await sendBatch(txns, lastComplete, changes);
          if (decided.length > 0) await sendNotices(decided);
        }
        // A branch writing a lot keeps its sequenced transactions until its
        // cursor passes them: tell it about them in bounded steps.
        else if (ownSequenced.length >= OWN_BATCH && lastComplete > advertised) await sendBatch([], lastComplete);
      }
    },
    onAck(cursor) {
      if (cursor > sentSeq) throw new StatusError(Status.INVALID_ARGUMENT, `ack cursor ${cursor} is beyond what was sent (${sentSeq})`);
      if (cursor <= ackedSeq) return;
      ackedSeq = cursor;
      while (inFlight.length > 0 && inFlight[0] <= cursor) inFlight.shift();
      ackWake?.();
      if (!cursorTimer) cursorTimer = setTimeout(() => { cursorTimer = null; flushCursor(); }, SAVE_CURSOR_EVERY_MS);
    },
    noteAppended(valid, res) {
      // Only a plain append stored exactly these bodies as whole entries:
      // the pump may pass them unread, and every session of this replica
      // may read them from memory.
      if (!res.plain || valid.length === 0 || valid.length !== res.outcomes.length) return;
      const first = res.outcomes[0].kind === "accepted" ? res.outcomes[0].seq : -1n;
      for (let i = 0; i < valid.length; i++) {
        const o = res.outcomes[i];
        if (o.kind !== "accepted" || o.seq !== first + BigInt(i) || valid[i].t.chunkIndex !== 0 || !valid[i].t.lastChunk) return;
      }
      if (ownAppends.length >= 64) ownAppends = ownAppends.slice(32);
      ownAppends.push({ first, txns: valid.map(({ t }) => t.originTxn) });
      d.logReader.committed(d.schema, valid.map(({ t, body }, i) => ({
        seq: first + BigInt(i), part: 0, lastPart: true, originBranch: d.branchId, originTxn: t.originTxn,
        nChanges: t.changes.length, conflicts: 0, body: Buffer.from(body.buffer, body.byteOffset, body.byteLength),
      })));
    },
    flushCursor() {
      if (cursorTimer) { clearTimeout(cursorTimer); cursorTimer = null; }
      flushCursor();
    },
    position: () => ({ sentSeq, ackedSeq }),
  };
}
