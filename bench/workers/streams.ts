/**
 * Holds many idle authenticated SyncStreams to one hub (streams section).
 * Config: JSON file argv[2] {address, tokens:[{token, tenant}], streamsPerConn, seed}.
 * Commands on stdin, one JSON per line; answers on stdout, one JSON per line:
 *   {"cmd":"open","n":N,"budgetMs":B}       → {"ev":"opened","total":T,"failed":F,"notTried":U,"errors":[...],"ms":M}
 *     (stops starting new streams after B ms: the hub may open them slower than the bench can wait)
 *   {"cmd":"ping","count":C,"spreadMs":S}   → {"ev":"pings","rtts":[ms...],"lost":L}
 * Each stream sent Hello with one small table and answers the hub's pings.
 */
import fs from "node:fs";
import readline from "node:readline";
import type * as grpc from "@grpc/grpc-js";
import { makeClient, openStream, pingMsg, type TableInit } from "../lib/wireclient.ts";
import { makeRng } from "../../lib/rng.ts";
import type { AgentCall } from "../../lib/wire.ts";

interface Cfg { address: string; tokens: { token: string; tenant: string }[]; streamsPerConn: number; seed: number }
const cfg = JSON.parse(fs.readFileSync(process.argv[2], "utf8")) as Cfg;
const rng = makeRng(cfg.seed);
const TABLE: TableInit = { name: "public.bench_stream", columns: [{ name: "id", type: "bigint", nullable: false }, { name: "v", type: "text", nullable: true }], primaryKey: ["id"] };

const clients: grpc.Client[] = [];
const streams: { call: AgentCall; alive: boolean }[] = [];
const pending = new Map<bigint, { t0: number; done: (rtt: number) => void }>();
let nonce = 1n;
let dropped = 0;
const dropReasons = new Map<string, number>();
const out = (o: unknown) => process.stdout.write(JSON.stringify(o) + "\n");

function clientFor(i: number): grpc.Client {
  const c = Math.floor(i / cfg.streamsPerConn);
  while (clients.length <= c) clients.push(makeClient(cfg.address));
  return clients[c];
}

async function openOne(): Promise<string | null> {
  const i = streams.length;
  const tok = cfg.tokens[i % cfg.tokens.length];
  const entry = { call: null as unknown as AgentCall, alive: true };
  streams.push(entry);
  const s = openStream(clientFor(i), tok.token, tok.tenant, [TABLE], (m) => {
    if (m.payload.case === "pong") {
      const p = pending.get(m.payload.value.nonce);
      if (p) { pending.delete(m.payload.value.nonce); p.done(performance.now() - p.t0); }
    }
  });
  entry.call = s.call;
  s.ended.then((e) => {
    if (!entry.alive) return;
    entry.alive = false;
    dropped++;
    const why = e ? `${e.code}: ${e.details}` : "ended by the hub";
    dropReasons.set(why, (dropReasons.get(why) ?? 0) + 1);
  });
  try {
    await Promise.race([s.welcome, new Promise((_, rej) => setTimeout(() => rej(new Error("no Welcome within 60 s")), 60_000))]);
    return null;
  } catch (e) {
    entry.alive = false;
    s.call.cancel();
    return (e as Error).message;
  }
}

async function open(n: number, budgetMs: number) {
  const t0 = performance.now();
  const deadline = t0 + budgetMs;
  let failed = 0;
  const errors = new Set<string>();
  let left = n;
  await Promise.all(Array.from({ length: Math.min(64, n) }, async () => {
    while (left > 0 && performance.now() < deadline) {
      left--;
      const err = await openOne();
      if (err) { failed++; if (errors.size < 5) errors.add(err); }
    }
  }));
  out({ ev: "opened", total: streams.filter((s) => s.alive).length, failed, dropped, errors: [...errors], notTried: left, ms: performance.now() - t0, dropReasons: Object.fromEntries(dropReasons) });
}

async function ping(count: number, spreadMs: number) {
  const live = streams.filter((s) => s.alive);
  const rtts: number[] = [];
  let lost = 0;
  const jobs: Promise<void>[] = [];
  for (let k = 0; k < count && live.length > 0; k++) {
    const s = live[Math.floor(rng() * live.length)];
    const at = rng() * spreadMs;
    jobs.push(new Promise<void>((resolve) => setTimeout(() => {
      const n = nonce++;
      const timer = setTimeout(() => { pending.delete(n); lost++; resolve(); }, 10_000);
      pending.set(n, { t0: performance.now(), done: (rtt) => { clearTimeout(timer); rtts.push(rtt); resolve(); } });
      s.call.write(pingMsg(n));
    }, at)));
  }
  await Promise.all(jobs);
  out({ ev: "pings", rtts, lost, dropped, dropReasons: Object.fromEntries(dropReasons) });
}

readline.createInterface({ input: process.stdin }).on("line", (line) => {
  const m = JSON.parse(line) as { cmd: string; n?: number; budgetMs?: number; count?: number; spreadMs?: number };
  if (m.cmd === "open") open(m.n!, m.budgetMs ?? Infinity).catch((e) => out({ ev: "error", error: String(e) }));
  else if (m.cmd === "ping") ping(m.count!, m.spreadMs!).catch((e) => out({ ev: "error", error: String(e) }));
}).on("close", () => shutdown());

function shutdown() {
  for (const s of streams) if (s.alive) { s.alive = false; s.call.cancel(); }
  for (const c of clients) c.close();
  setTimeout(() => process.exit(0), 200);
}
process.on("SIGTERM", shutdown);
out({ ev: "started" });
