import assert from "node:assert/strict";
import { create, toBinary, equals } from "@bufbuild/protobuf";
import { HubMessageSchema, TransactionSchema, Op } from "../gen/branchsync/v1/sync_pb.ts";
import { encodeChangeBatch } from "../hub/stream/encode.ts";
import { fromBinary } from "@bufbuild/protobuf";

describe("hand-built downstream messages", () => {
  it("decode to exactly what protobuf-es would have built", async () => {
    const txns = [1n, 127n, 128n, 300n, 2n ** 40n].map((seq, i) => ({
      seq,
      t: create(TransactionSchema, {
        originTxn: BigInt(1000 + i), originBranch: "b" + i, chunkIndex: i, lastChunk: i % 2 === 0, commitTimeUs: 123n,
        changes: Array.from({ length: i * 50 }, (_, k) => ({ table: "public.items", op: Op.UPDATE, key: `[${k}]`, row: `{"id":${k},"x":"${"y".repeat(k)}"}` })),
      }),
    }));
    for (const cursor of [0n, 5n, 2n ** 40n + 1n]) {
      const own = cursor === 5n ? [{ originTxn: 9n, seq: 3n }, { originTxn: 2n ** 60n, seq: 4n }] : [];
      const raw = encodeChangeBatch(txns.map(({ seq, t }) => ({ seq, body: Buffer.from(toBinary(TransactionSchema, t)) })), cursor, own);
      const want = create(HubMessageSchema, { payload: { case: "changes", value: {
        transactions: txns.map(({ seq, t }) => ({ ...t, seq })), cursorAfter: cursor, ownSequenced: own,
      } } });
      assert.ok(equals(HubMessageSchema, fromBinary(HubMessageSchema, raw), want));
      const { decodeChangesEnvelope } = await import("../lib/protowire.ts");
      const fast = decodeChangesEnvelope(raw)!;
      assert.deepEqual(fast.ownSequenced, own);
      assert.equal(fast.cursorAfter, cursor);
    }
  });
});

describe("hand-built upstream messages", () => {
  it("decode to exactly what protobuf-es would have built", async () => {
    const { encodeUpstreamBatch } = await import("../lib/protowire.ts");
    const { AgentMessageSchema } = await import("../gen/branchsync/v1/sync_pb.ts");
    const txns = [0, 1, 3, 200].map((n, i) => create(TransactionSchema, {
      originTxn: BigInt(2 ** 33 + i), chunkIndex: i, lastChunk: i !== 1, commitTimeUs: BigInt(Date.now()) * 1000n,
      baseSeq: BigInt(i * 300), hlc: i ? (BigInt(Date.now()) << 16n) + BigInt(i) : 0n,
      changes: Array.from({ length: n }, (_, k) => ({
        table: "public.ütems", op: [Op.INSERT, Op.UPDATE, Op.DELETE][k % 3], key: `[${k}]`, row: `{"id":${k},"s":"${"é😀".repeat(k)}"}`,
        prev: k % 3 === 1 ? `{"s": ["${"ö".repeat(k)}"]}` : "",
      })),
    }));
    for (const batchId of [0n, 1n, 300n, 2n ** 50n]) {
      const got = fromBinary(AgentMessageSchema, encodeUpstreamBatch(batchId, txns));
      const want = create(AgentMessageSchema, { payload: { case: "changes", value: { batchId, transactions: txns } } });
      assert.ok(equals(AgentMessageSchema, got, want), `batch ${batchId}`);
    }
  });
});

describe("hand-built upstream messages, sizes at the edges", () => {
  it("are byte for byte what protobuf-es writes, whatever the lengths of strings, changes and transactions", async () => {
    const { encodeUpstreamBatch } = await import("../lib/protowire.ts");
    const { AgentMessageSchema } = await import("../gen/branchsync/v1/sync_pb.ts");
    // Each length class of a varint, for strings whose UTF-8 length is far
    // from (ASCII) or at (3-byte characters) three bytes per UTF-16 unit,
    // and changes and transactions straddling 128 B, 16 KiB and 2 MiB.
    const sizes = [1, 40, 42, 43, 127, 128, 5461, 5462, 16383, 16384, 20000, 700_000];
    const rows = sizes.flatMap((n) => ["a".repeat(n), "€".repeat(n), "😀".repeat(Math.ceil(n / 2))]);
    const tables = ["public.aa", "public.bb", "public.aa", "", "public.aaa", "s.ü"];
    const txns = [rows.slice(0, 3), rows.slice(3, 12), rows.slice(12)].map((rs, i) => create(TransactionSchema, {
      originTxn: BigInt(i + 1), lastChunk: true, commitTimeUs: 1n, hlc: 2n,
      changes: rs.map((row, k) => ({ table: tables[k % tables.length], op: Op.UPDATE, key: `[${"k".repeat(k * 7)}]`, row, prev: k % 2 ? row.slice(0, 60) : "" })),
    }));
    txns.push(create(TransactionSchema, { originTxn: 9n, changes: [{ table: "t", key: "[1]", row: "{}" }] }));
    for (const batch of [txns, txns.slice(3), txns.slice(0, 1)]) {
      const want = create(AgentMessageSchema, { payload: { case: "changes", value: { batchId: 5n, transactions: batch } } });
      assert.ok(Buffer.from(toBinary(AgentMessageSchema, want)).equals(encodeUpstreamBatch(5n, batch)));
    }
  });
});

describe("hand-written decoding", () => {
  it("reads change batches exactly like protobuf-es, keeping each transaction's bytes", async () => {
    const { decodeChangesEnvelope, withOriginBranch } = await import("../lib/protowire.ts");
    const { AgentMessageSchema } = await import("../gen/branchsync/v1/sync_pb.ts");
    const txns = [0, 2, 120].map((n, i) => create(TransactionSchema, {
      originTxn: 2n ** 62n + BigInt(i), originBranch: i ? "b" : "", seq: BigInt(i * 1000), chunkIndex: i, lastChunk: i !== 1, commitTimeUs: -5n + BigInt(i),
      baseSeq: BigInt(i) * 2n ** 40n, hlc: BigInt(i) * 2n ** 60n,
      changes: Array.from({ length: n }, (_, k) => ({ table: "public.t", op: k % 2 ? Op.DELETE : Op.UPDATE, key: `["k${k}"]`, row: `{"v":"${"ß".repeat(k)}"}`, prev: k % 2 ? "" : `{"v": [${k}]}` })),
    }));
    const msg = create(AgentMessageSchema, { payload: { case: "changes", value: { batchId: 77n, transactions: txns } } });
    const bytes = Buffer.from(toBinary(AgentMessageSchema, msg));
    const fast = decodeChangesEnvelope(bytes)!;
    assert.equal(fast.batchId, 77n);
    assert.equal(fast.transactions.length, 3);
    fast.transactions.forEach((t, i) => {
      const want = txns[i];
      assert.deepEqual(
        { o: t.originTxn, b: t.originBranch, s: t.seq, c: t.chunkIndex, l: t.lastChunk, u: t.commitTimeUs, ch: t.changes, base: t.baseSeq, h: t.hlc },
        { o: want.originTxn, b: want.originBranch, s: want.seq, c: want.chunkIndex, l: want.lastChunk, u: want.commitTimeUs,
          ch: want.changes.map((c) => ({ table: c.table, op: c.op, key: c.key, row: c.row, prev: c.prev })), base: want.baseSeq, h: want.hlc });
      assert.ok(equals(TransactionSchema, fromBinary(TransactionSchema, t.raw), want), "raw bytes are the transaction");
      assert.equal(fromBinary(TransactionSchema, withOriginBranch(t.raw, "forced")).originBranch, "forced");
    });
    // Other payloads are left to protobuf-es.
    assert.equal(decodeChangesEnvelope(Buffer.from(toBinary(AgentMessageSchema, create(AgentMessageSchema, { payload: { case: "ack", value: { cursor: 5n } } })))), null);
  });

  it("gives every change its own table when names repeat, alternate, share a length or are not UTF-8", async () => {
    const { decodeChangesEnvelope, encodeUpstreamBatch } = await import("../lib/protowire.ts");
    const tables = ["public.aa", "public.aa", "public.bb", "public.aa", "", "public.aaa", "public.aa", "public.cc", "public.cc"];
    const bytes = encodeUpstreamBatch(1n, [{ originTxn: 1n, chunkIndex: 0, lastChunk: true, commitTimeUs: 1n, baseSeq: 0n, hlc: 1n,
      changes: tables.map((table, k) => ({ table, op: Op.INSERT, key: `[${k}]`, row: "{}", prev: "" })) }]);
    // The last table's bytes broken after an intact one of the same length and spelling.
    const at = bytes.lastIndexOf(Buffer.from("public.cc"));
    bytes[at + 7] = 0xff;
    const got = decodeChangesEnvelope(bytes)!.transactions[0].changes;
    assert.deepEqual(got.slice(0, 8).map((c) => c.table), tables.slice(0, 8));
    assert.deepEqual(got.slice(0, 8).map((c) => c.notUtf8), Array(8).fill(undefined));
    assert.equal(got[8].notUtf8, "table");
    assert.equal(got[8].table, "public.\uFFFDc");
  });

  it("marks a string field whose bytes are not UTF-8, and only that", async () => {
    const { decodeChangesEnvelope, encodeUpstreamBatch } = await import("../lib/protowire.ts");
    const txn = (row: string, key = "[1]") => ({ originTxn: 1n, chunkIndex: 0, lastChunk: true, commitTimeUs: 1n, baseSeq: 0n, hlc: 1n,
      changes: [{ table: "public.t", op: Op.INSERT, key, row, prev: "" }] });
    const decodeWith = (bytes: Buffer) => decodeChangesEnvelope(bytes)!.transactions[0].changes[0];
    // Valid text, also a real U+FFFD and 4-byte characters: not marked.
    assert.equal(decodeWith(encodeUpstreamBatch(1n, [txn(`{"v":"a\uFFFD😀ß"}`)])).notUtf8, undefined);
    // Broken on purpose: a truncated 4-byte sequence decodes to a single
    // U+FFFD for three bytes (same length as the bytes), a lone continuation byte.
    for (const [bad, field] of [[[0xf0, 0x9f, 0x98], "row"], [[0x80], "key"]] as const) {
      const marker = field === "row" ? "XYZW" : "[9]";
      const bytes = encodeUpstreamBatch(1n, [field === "row" ? txn(`{"v":"${marker}"}`) : txn("{}", marker)]);
      const at = bytes.indexOf(Buffer.from(marker));
      Buffer.from(bad).copy(bytes, at + (field === "row" ? 0 : 1));
      const c = decodeWith(bytes);
      assert.equal(c.notUtf8, field, `${bad} in ${field}: ${JSON.stringify(c)}`);
    }
  });
});

describe("hand-written acks", () => {
  const big = [0n, 1n, 127n, 128n, 2n ** 35n, 2n ** 64n - 1n];

  it("BatchAck and Ack are byte for byte what protobuf-es writes", async () => {
    const { encodeBatchAck, encodeAck } = await import("../lib/protowire.ts");
    const { AgentMessageSchema, Outcome } = await import("../gen/branchsync/v1/sync_pb.ts");
    const outcomes = big.map((v, i) => ({
      originTxn: v, chunkIndex: [0, 1, 200, 2 ** 31][i % 4], outcome: [Outcome.ACCEPTED, Outcome.DUPLICATE, Outcome.STAGED, Outcome.REJECTED][i % 4],
      seq: big[(i + 2) % big.length], error: i % 4 === 3 ? `transaction ${v}: é ${"x".repeat(i * 40)}` : "",
    }));
    // Outcome lists whose messages straddle the 1- and 2-byte lengths.
    for (const list of [[], outcomes.slice(0, 1), outcomes, Array(40).fill(outcomes).flat()]) {
      for (const batchId of [0n, 5n, 2n ** 64n - 1n]) {
        const want = toBinary(HubMessageSchema, create(HubMessageSchema, { payload: { case: "batchAck", value: { batchId, outcomes: list } } }));
        assert.ok(Buffer.from(want).equals(encodeBatchAck(batchId, list)), `batch ${batchId}, ${list.length} outcomes`);
      }
    }
    for (const cursor of big) {
      const want = toBinary(AgentMessageSchema, create(AgentMessageSchema, { payload: { case: "ack", value: { cursor } } }));
      assert.ok(Buffer.from(want).equals(encodeAck(cursor)), `cursor ${cursor}`);
    }
  });

  it("decode like protobuf-es, and leave anything but a plain ack to it", async () => {
    const { decodeAgent, decodeHub } = await import("../lib/wire.ts");
    const { AgentMessageSchema, Outcome } = await import("../gen/branchsync/v1/sync_pb.ts");
    const outcomes = big.map((v, i) => ({ originTxn: v, chunkIndex: i, outcome: Outcome.ACCEPTED + (i % 4), seq: v, error: i % 2 ? `no ${i} ü` : "" }));
    const hub = create(HubMessageSchema, { payload: { case: "batchAck", value: { batchId: 9n, outcomes } } });
    const got = decodeHub(Buffer.from(toBinary(HubMessageSchema, hub)));
    assert.equal(got.payload.case, "batchAck");
    assert.deepEqual(got.payload.value, { batchId: 9n, outcomes });
    for (const cursor of big) {
      const m = decodeAgent(Buffer.from(toBinary(AgentMessageSchema, create(AgentMessageSchema, { payload: { case: "ack", value: { cursor } } }))));
      assert.deepEqual(m.payload, { case: "ack", value: { cursor } });
    }
    // An unknown field inside, or a second payload field after the ack
    // (the last one wins): protobuf-es decides, and its answer stands.
    const ack = Buffer.from(toBinary(AgentMessageSchema, create(AgentMessageSchema, { payload: { case: "ack", value: { cursor: 7n } } })));
    const withUnknown = Buffer.concat([Buffer.from([0x1a, ack[1] + 2]), ack.subarray(2), Buffer.from([0x50, 0x01])]);
    assert.deepEqual(decodeAgent(withUnknown).payload.value, fromBinary(AgentMessageSchema, withUnknown).payload.value);
    assert.ok("$typeName" in (decodeAgent(withUnknown).payload.value as object), "left to protobuf-es");
    const ping = Buffer.from(toBinary(AgentMessageSchema, create(AgentMessageSchema, { payload: { case: "ping", value: { nonce: 3n } } })));
    const twoFields = Buffer.concat([ack, ping]);
    assert.equal(decodeAgent(twoFields).payload.case, "ping");
    // Broken UTF-8 in an error: protobuf-es rejects it, so does the stream.
    const bad = Buffer.from(toBinary(HubMessageSchema, create(HubMessageSchema, { payload: { case: "batchAck", value: { outcomes: [{ outcome: Outcome.REJECTED, error: "abc" }] } } })));
    bad[bad.indexOf(Buffer.from("abc"))] = 0xff;
    assert.throws(() => decodeHub(bad));
  });
});
