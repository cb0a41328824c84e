/**
 * Microbenchmark of the hand-written wire codecs (lib/protowire.ts) against
 * protobuf-es on the same messages, in one process, so the ratio holds
 * however fast the machine is at the moment:
 *
 *   node --import tsx bench/codec-micro.ts [--rounds 5]
 *
 * Messages: an upstream batch of 3 transactions × 100 W1 rows (inserts, and
 * updates with old values), a BatchAck of 3 outcomes, an Ack. Prints ns per
 * change (batches) or per message (acks); the best of the rounds.
 */
import { createHash } from "node:crypto";
import { create, toBinary, fromBinary } from "@bufbuild/protobuf";
import { AgentMessageSchema, HubMessageSchema, Op, Outcome } from "../gen/branchsync/v1/sync_pb.ts";
import { encodeUpstreamBatch, encodeBatchAck, encodeAck, decodeChangesEnvelope, type WireTxn } from "../lib/protowire.ts";
import { decodeAgent, decodeHub } from "../lib/wire.ts";

const rounds = Number(process.argv[process.argv.indexOf("--rounds") + 1] || 5) || 5;

function w1Change(g: number, op: Op) {
  const md5 = createHash("md5").update(String(g)).digest("hex");
  return {
    table: "public.items", op, key: `[${g}]`,
    row: `{"id":${g},"sku":"sku-${g}","qty":${g % 1000},"price":${(g % 100000) / 100},"note":"note ${md5}","updated_at":"2026-11-23T12:00:00.123456+00:00"}`,
    prev: op === Op.UPDATE ? `{"qty":[${g % 1000}],"price":[${(g % 100000) / 100}],"updated_at":["2026-11-23T11:00:00.5+00:00"]}` : "",
  };
}

function batch(op: Op): WireTxn[] {
  return [0, 1, 2].map((t) => ({
    originTxn: BigInt(1e9 + t), chunkIndex: 0, lastChunk: true, commitTimeUs: 1_763_900_000_000_000n, baseSeq: 12_345n,
    hlc: 1_763_900_000_000n << 16n, changes: Array.from({ length: 100 }, (_, k) => w1Change(1_000_000 + t * 100 + k, op)),
  }));
}

/** Best ns per unit over the rounds. */
function measure(units: number, f: () => unknown): number {
  let iterations = 1;
  for (let t0 = performance.now(); performance.now() - t0 < 50; iterations *= 2) for (let i = 0; i < iterations; i++) f();
  let best = Infinity;
  for (let r = 0; r < rounds; r++) {
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < iterations; i++) f();
    best = Math.min(best, Number(process.hrtime.bigint() - t0) / (iterations * units));
  }
  return best;
}

const rows: [string, string, number, number][] = [];
for (const [name, op] of [["W1 insert", Op.INSERT], ["W1 update", Op.UPDATE]] as const) {
  const txns = batch(op);
  const msg = create(AgentMessageSchema, { payload: { case: "changes", value: { batchId: 1n, transactions: txns } } });
  const bytes = encodeUpstreamBatch(1n, txns);
  rows.push([`upstream batch, ${name}: encode`, "change",
    measure(300, () => toBinary(AgentMessageSchema, msg)), measure(300, () => encodeUpstreamBatch(1n, txns))]);
  rows.push([`upstream batch, ${name}: decode`, "change",
    measure(300, () => fromBinary(AgentMessageSchema, bytes)), measure(300, () => decodeChangesEnvelope(bytes))]);
}
const outcomes = [0, 1, 2].map((i) => ({ originTxn: 1_000_000n + BigInt(i), chunkIndex: 0, outcome: Outcome.ACCEPTED, seq: 5000n + BigInt(i), error: "" }));
const batchAck = encodeBatchAck(7n, outcomes);
rows.push(["BatchAck (3 outcomes): encode", "message",
  measure(1, () => toBinary(HubMessageSchema, create(HubMessageSchema, { payload: { case: "batchAck", value: { batchId: 7n, outcomes } } }))),
  measure(1, () => encodeBatchAck(7n, outcomes))]);
rows.push(["BatchAck (3 outcomes): decode", "message", measure(1, () => fromBinary(HubMessageSchema, batchAck)), measure(1, () => decodeHub(batchAck))]);
const ack = encodeAck(123_456n);
rows.push(["Ack: encode", "message",
  measure(1, () => toBinary(AgentMessageSchema, create(AgentMessageSchema, { payload: { case: "ack", value: { cursor: 123_456n } } }))),
  measure(1, () => encodeAck(123_456n))]);
rows.push(["Ack: decode", "message", measure(1, () => fromBinary(AgentMessageSchema, ack)), measure(1, () => decodeAgent(ack))]);

console.log("| codec | per | protobuf-es ns | hand-written ns | ratio |\n|---|---|---|---|---|");
for (const [name, per, es, hand] of rows) console.log(`| ${name} | ${per} | ${es.toFixed(0)} | ${hand.toFixed(0)} | ${(es / hand).toFixed(1)}× |`);
console.log(`best of ${rounds} rounds; reproduce: node --import tsx bench/codec-micro.ts --rounds ${rounds}`);
