/**
 * Agent-less branches pushing ChangeBatches at one hub (ingest section).
 * Config: JSON file argv[2] {address, pushers:[{token, tenant}], txnsPerBatch,
 * changesPerTxn, window, streamsPerConn}. Every pusher opens a SyncStream,
 * sends Hello declaring public.items, prints {"ev":"ready"} once all are
 * welcomed; on {"cmd":"go","ms":D,"warmupMs":W} each keeps `window` batches
 * of valid INSERT rows in flight for W+D ms, and the worker prints
 * {"ev":"result"} with what the hub acknowledged inside the timed window.
 * Downstream batches (other branches' changes) are read and dropped, never acked.
 */
import fs from "node:fs";
import readline from "node:readline";
import type * as grpc from "@grpc/grpc-js";
import { create } from "@bufbuild/protobuf";
import { AgentMessageSchema, Op, Outcome, type AgentMessage } from "../../gen/branchsync/v1/sync_pb.ts";
import { makeClient, openStream, ITEMS } from "../lib/wireclient.ts";
import type { AgentCall } from "../../lib/wire.ts";

interface Cfg { address: string; pushers: { token: string; tenant: string }[]; txnsPerBatch: number; changesPerTxn: number; window: number; streamsPerConn: number }
const cfg = JSON.parse(fs.readFileSync(process.argv[2], "utf8")) as Cfg;
const out = (o: unknown) => process.stdout.write(JSON.stringify(o) + "\n");

/** A row in to_jsonb's encoding, as the agent's capture trigger produces it. */
function row(id: number): string {
  return `{"id": ${id}, "qty": ${id % 1000}, "sku": "sku-${id}", "note": "n${id}", "price": ${((id % 100000) / 100).toFixed(2)}, "updated_at": "2024-01-01T00:00:00.123456+00:00"}`;
}

interface Pusher { call: AgentCall; idx: number; nextTxn: bigint; nextBatch: bigint; sent: Map<bigint, number>; inFlight: number }

const clients: grpc.Client[] = [];
const pushers: Pusher[] = [];
let windowStart = Infinity;
let windowEnd = Infinity;
let stopAt = Infinity;
const stats = { acceptedChanges: 0, acceptedTxns: 0, batches: 0, allAcceptedChanges: 0, duplicate: 0, rejected: 0, rejectErrors: [] as string[], ackMs: [] as number[], downstreamChanges: 0, errors: [] as string[] };
let finishing: (() => void) | null = null;

function batch(p: Pusher): AgentMessage {
  const transactions = [];
  for (let t = 0; t < cfg.txnsPerBatch; t++) {
    const txn = p.nextTxn++;
    const changes = [];
    for (let c = 0; c < cfg.changesPerTxn; c++) {
      const id = p.idx * 1_000_000_000 + Number(txn) * cfg.changesPerTxn + c;
      changes.push({ table: "public.items", op: Op.INSERT, key: `[${id}]`, row: row(id) });
    }
    transactions.push({ originTxn: txn, chunkIndex: 0, lastChunk: true, commitTimeUs: BigInt(Date.now()) * 1000n, changes });
  }
  const batchId = p.nextBatch++;
  p.sent.set(batchId, performance.now());
  return create(AgentMessageSchema, { payload: { case: "changes", value: { batchId, transactions } } });
}

function pump(p: Pusher) {
  while (p.inFlight < cfg.window && performance.now() < stopAt) {
    p.inFlight++;
    p.call.write(batch(p));
  }
  if (p.inFlight === 0 && pushers.every((q) => q.inFlight === 0)) finishing?.();
}

async function setup() {
  await Promise.all(cfg.pushers.map(async (pc, idx) => {
    const c = Math.floor(idx / cfg.streamsPerConn);
    while (clients.length <= c) clients.push(makeClient(cfg.address));
    const p: Pusher = { call: null as unknown as AgentCall, idx: idx + 1, nextTxn: 1n, nextBatch: 1n, sent: new Map(), inFlight: 0 };
    const s = openStream(clients[c], pc.token, pc.tenant, [ITEMS], (m) => {
      const pl = m.payload;
      if (pl.case === "batchAck") {
        const now = performance.now();
        const t0 = p.sent.get(pl.value.batchId) ?? now;
        p.sent.delete(pl.value.batchId);
        p.inFlight--;
        let changes = 0;
        for (const o of pl.value.outcomes) {
          if (o.outcome === Outcome.ACCEPTED) { changes += cfg.changesPerTxn; if (now >= windowStart && now <= windowEnd) stats.acceptedTxns++; }
          else if (o.outcome === Outcome.DUPLICATE) stats.duplicate++;
          else if (o.outcome === Outcome.REJECTED) { stats.rejected++; if (stats.rejectErrors.length < 3) stats.rejectErrors.push(o.error); }
        }
        stats.allAcceptedChanges += changes;
        if (now >= windowStart && now <= windowEnd) { stats.acceptedChanges += changes; stats.batches++; stats.ackMs.push(now - t0); }
        pump(p);
      } else if (pl.case === "changes") {
        for (const t of pl.value.transactions) stats.downstreamChanges += t.changes.length;
      }
    });
    p.call = s.call;
    s.ended.then((e) => { if (e && performance.now() < stopAt && stats.errors.length < 5) stats.errors.push(`${e.code}: ${e.details}`); p.inFlight = 0; if (pushers.every((q) => q.inFlight === 0)) finishing?.(); });
    await s.welcome;
    pushers.push(p);
  }));
  out({ ev: "ready", n: pushers.length });
}

readline.createInterface({ input: process.stdin }).on("line", (line) => {
  const m = JSON.parse(line) as { cmd: string; ms: number; warmupMs: number };
  if (m.cmd !== "go") return;
  const t = performance.now();
  windowStart = t + m.warmupMs;
  windowEnd = windowStart + m.ms;
  stopAt = windowEnd;
  const cpu0 = process.cpuUsage();
  new Promise<void>((resolve) => { finishing = resolve; for (const p of pushers) pump(p); }).then(() => {
    const cpu = process.cpuUsage(cpu0);
    out({ ev: "result", ...stats, ackMs: stats.ackMs, windowMs: m.ms, clientCpuS: (cpu.user + cpu.system) / 1e6, wallS: (performance.now() - t) / 1000 });
  });
}).on("close", () => process.exit(0));

setup().catch((e) => { out({ ev: "error", error: String(e) }); process.exit(1); });
process.on("SIGTERM", () => process.exit(0));
