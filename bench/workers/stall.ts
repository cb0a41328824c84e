/**
 * Misbehaving receiving branches for the stall section: agent-less SyncStreams
 * that declare public.items, resume from cursor 0 and never send Ack.
 * Config: JSON file argv[2] {address, keepaliveMs, receivers:[{name, mode, token, tenant}]}.
 *   mode "stalled": stops reading the stream right after Welcome, so what
 *     the hub sends it piles up in HTTP/2 flow control, not in this process.
 *   mode "noack": reads and counts every ChangeBatch, acks none.
 * Each sends a Ping every keepaliveMs: the hub ends a session it has not
 * heard from for three heartbeat intervals (45 s), which would free what the
 * stall is meant to make the hub hold.
 * Commands on stdin, answers on stdout (one JSON per line):
 *   (at start)                         → {"ev":"ready","receivers":[Stats...]}
 *   {"cmd":"report"}                   → {"ev":"report","receivers":[Stats...]}
 *   {"cmd":"resume","quietMs":Q}       → stalled receivers read again, still never ack;
 *                                        once no ChangeBatch arrived for Q ms: {"ev":"resumed","receivers":[Stats...]}
 */
import fs from "node:fs";
import readline from "node:readline";
import type * as grpc from "@grpc/grpc-js";
import type { HubMessage } from "../../gen/branchsync/v1/sync_pb.ts";
import { makeClient, openStream, pingMsg, ITEMS } from "../lib/wireclient.ts";
import type { AgentCall } from "../../lib/wire.ts";
import type { ReceiverStats } from "../sections/stallcheck.ts";

type Mode = ReceiverStats["mode"];
interface Cfg { address: string; keepaliveMs: number; receivers: { name: string; mode: Mode; token: string; tenant: string }[] }
const cfg = JSON.parse(fs.readFileSync(process.argv[2], "utf8")) as Cfg;
const out = (o: unknown) => process.stdout.write(JSON.stringify(o) + "\n");

/** What this worker reports per receiver (the section's checks read the same shape). */
type Stats = ReceiverStats;

interface Receiver { stats: Stats; call: AgentCall; client: grpc.Client; lastMessageAt: number }

/**
 * grpc-js reads the next message off HTTP/2 whenever its Readable wants
 * more, and a paused Readable still wants more until 16 messages are
 * buffered. A no-op _read stops it at the message in hand, so from here on
 * the hub meets HTTP/2 flow control, not a buffer in this process.
 */
function stopReading(call: AgentCall): void {
  call.pause();
  (call as unknown as { _read: (n: number) => void })._read = () => undefined;
}

function startReading(call: AgentCall): void {
  delete (call as unknown as { _read?: unknown })._read;
  call.resume();
  // Readable still counts the no-op's read as outstanding and will not ask
  // again by itself: ask grpc-js once, as its own _read would.
  (Object.getPrototypeOf(call) as { _read(n: number): void })._read.call(call, 0);
}

function open(r: Cfg["receivers"][number]): Promise<Receiver> {
  const client = makeClient(cfg.address);
  const stats: Stats = { name: r.name, mode: r.mode, maxBatchChanges: 0, reading: true, batches: 0, changes: 0, largestBatch: 0, cursorOnly: 0, buffered: 0, ended: null };
  const rec: Receiver = { stats, call: null as unknown as AgentCall, client, lastMessageAt: performance.now() };
  const s = openStream(client, r.token, r.tenant, [ITEMS], (m: HubMessage) => {
    if (m.payload.case !== "changes") return;
    rec.lastMessageAt = performance.now();
    const n = m.payload.value.transactions.reduce((a, t) => a + t.changes.length, 0);
    if (m.payload.value.transactions.length === 0) { stats.cursorOnly++; return; }
    stats.batches++;
    stats.changes += n;
    stats.largestBatch = Math.max(stats.largestBatch, n);
  });
  rec.call = s.call;
  // Listens after openStream's own handler, so Welcome is the last message a stalled receiver takes.
  s.call.on("data", (m: HubMessage) => {
    if (m.payload.case !== "welcome") return;
    stats.maxBatchChanges = m.payload.value.maxBatchChanges;
    if (r.mode === "stalled") { stats.reading = false; stopReading(s.call); }
  });
  s.ended.then((e) => { stats.ended = e ? `${e.code}: ${e.details}` : "ended by the hub"; });
  return s.welcome.then(() => rec);
}

const snapshot = (rs: Receiver[]) => rs.map((r) => ({ ...r.stats, buffered: r.call.readableLength }));

async function main() {
  const receivers = await Promise.all(cfg.receivers.map(open));
  let nonce = 1n;
  const keepalive = setInterval(() => { for (const r of receivers) if (!r.stats.ended) r.call.write(pingMsg(nonce++)); }, cfg.keepaliveMs);
  out({ ev: "ready", receivers: snapshot(receivers) });

  const shutdown = () => {
    clearInterval(keepalive);
    for (const r of receivers) { r.call.cancel(); r.client.close(); }
    setTimeout(() => process.exit(0), 200);
  };
  process.on("SIGTERM", shutdown);
  readline.createInterface({ input: process.stdin }).on("line", (line) => {
    const m = JSON.parse(line) as { cmd: string; quietMs?: number };
    if (m.cmd === "report") out({ ev: "report", receivers: snapshot(receivers) });
    else if (m.cmd === "resume") {
      const now = performance.now();
      for (const r of receivers) if (!r.stats.reading) { r.stats.reading = true; r.lastMessageAt = now; startReading(r.call); }
      const quiet = m.quietMs ?? 1000;
      const t = setInterval(() => {
        if (receivers.some((r) => performance.now() - r.lastMessageAt < quiet)) return;
        clearInterval(t);
        out({ ev: "resumed", receivers: snapshot(receivers) });
      }, 50);
    }
  }).on("close", shutdown);
}

main().catch((e) => { out({ ev: "error", error: String(e) }); process.exit(1); });
