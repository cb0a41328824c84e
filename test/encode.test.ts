import assert from "node:assert/strict";
import { create, toBinary, equals } from "@bufbuild/protobuf";
import { HubMessageSchema, TransactionSchema, Op } from "../gen/branchsync/v1/sync_pb.ts";
import { encodeChangeBatch } from "../hub/stream/encode.ts";
import { decodeHub } from "../lib/wire.ts";

describe("hand-built downstream messages", () => {
  it("decode to exactly what protobuf-es would have built", () => {
    const txns = [1n, 127n, 128n, 300n, 2n ** 40n].map((seq, i) => ({
      seq,
      t: create(TransactionSchema, {
        originTxn: BigInt(1000 + i), originBranch: "b" + i, chunkIndex: i, lastChunk: i % 2 === 0, commitTimeUs: 123n,
        changes: Array.from({ length: i * 50 }, (_, k) => ({ table: "public.items", op: Op.UPDATE, key: `[${k}]`, row: `{"id":${k},"x":"${"y".repeat(k)}"}` })),
      }),
    }));
    for (const cursor of [0n, 5n, 2n ** 40n + 1n]) {
      const raw = encodeChangeBatch(txns.map(({ seq, t }) => ({ seq, body: Buffer.from(toBinary(TransactionSchema, t)) })), cursor);
      const want = create(HubMessageSchema, { payload: { case: "changes", value: {
        transactions: txns.map(({ seq, t }) => ({ ...t, seq })), cursorAfter: cursor,
      } } });
      assert.ok(equals(HubMessageSchema, decodeHub(raw), want));
    }
  });
});

describe("hand-built upstream messages", () => {
  it("decode to exactly what protobuf-es would have built", async () => {
    const { encodeUpstreamBatch } = await import("../lib/protowire.ts");
    const { AgentMessageSchema } = await import("../gen/branchsync/v1/sync_pb.ts");
    const { decodeAgent } = await import("../lib/wire.ts");
    const txns = [0, 1, 3, 200].map((n, i) => create(TransactionSchema, {
      originTxn: BigInt(2 ** 33 + i), chunkIndex: i, lastChunk: i !== 1, commitTimeUs: BigInt(Date.now()) * 1000n,
      changes: Array.from({ length: n }, (_, k) => ({ table: "public.ütems", op: [Op.INSERT, Op.UPDATE, Op.DELETE][k % 3], key: `[${k}]`, row: `{"id":${k},"s":"${"é😀".repeat(k)}"}` })),
    }));
    for (const batchId of [0n, 1n, 300n, 2n ** 50n]) {
      const got = decodeAgent(encodeUpstreamBatch(batchId, txns));
      const want = create(AgentMessageSchema, { payload: { case: "changes", value: { batchId, transactions: txns } } });
      assert.ok(equals(AgentMessageSchema, got, want), `batch ${batchId}`);
    }
  });
});
