import assert from "node:assert/strict";
import * as grpc from "@grpc/grpc-js";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { Op, Outcome, type HubMessage } from "../gen/branchsync/v1/sync_pb.ts";
import { AuthService } from "../gen/branchsync/v1/auth_pb.ts";
import { startCluster, ITEMS_DDL, type Cluster } from "./support/cluster.ts";
import { rawStream, ITEMS_SCHEMA, type RawStream } from "./support/wire.ts";
import { encodeUpstreamBatch, Writer, WIRE_LEN, WIRE_VARINT } from "../lib/protowire.ts";

const good = { id: 1, sku: "a", qty: 1, price: 1.5, note: null, updated_at: "2024-01-01T00:00:00+00:00" };
const change = (row: Record<string, unknown>, extra: Record<string, unknown> = {}) =>
  ({ table: "public.items", op: Op.INSERT, key: `[${row.id ?? 1}]`, row: JSON.stringify(row), ...extra });

describe("bad input gets a clear error and changes nothing", function () {
  this.timeout(60_000);
  let c: Cluster;
  let token: string;
  const logCount = async () => (await c.hubDb.pool.query("SELECT count(*)::int AS n FROM tenant_bad.log")).rows[0].n;

  async function session(): Promise<RawStream> {
    const s = rawStream(c.hub.grpcPort, token);
    s.send({ case: "hello", value: { tables: [ITEMS_SCHEMA], agentVersion: "test" } });
    assert.equal((await s.next()).payload.case, "welcome");
    return s;
  }

  async function nextAck(s: RawStream): Promise<Extract<HubMessage["payload"], { case: "batchAck" }>["value"]> {
    for (;;) {
      const m = await s.next();
      if (m.payload.case === "batchAck") return m.payload.value;
    }
  }

  before(async () => {
    c = await startCluster();
    await c.addTenant("bad");
    const b = await c.addBranch("bad", "b1", ITEMS_DDL, ["items"]);
    const auth = createClient(AuthService, createConnectTransport({ baseUrl: `http://127.0.0.1:${c.hub.httpPort}`, httpVersion: "1.1" }));
    token = (await auth.issueToken({ apiKey: b.apiKey })).token;
  });
  after(async () => { await c?.close(); });

  it("ends the stream on protocol misuse, with a status that says what to do", async () => {
    const cases: [string, (s: RawStream) => void, number, RegExp][] = [
      ["empty message", (s) => s.send({ case: undefined }), grpc.status.INVALID_ARGUMENT, /set one payload/],
      ["changes before Hello", (s) => s.send({ case: "changes", value: { batchId: 1n } }), grpc.status.FAILED_PRECONDITION, /Hello/],
      ["Hello twice", (s) => { s.send({ case: "hello", value: { tables: [ITEMS_SCHEMA] } }); s.send({ case: "hello", value: { tables: [ITEMS_SCHEMA] } }); }, grpc.status.INVALID_ARGUMENT, /only be sent once/],
      ["table without primary key", (s) => s.send({ case: "hello", value: { tables: [{ ...ITEMS_SCHEMA, primaryKey: [] }] } }), grpc.status.FAILED_PRECONDITION, /public\.items has no primary key/],
      ["identifier injection", (s) => s.send({ case: "hello", value: { tables: [{ ...ITEMS_SCHEMA, name: 'public.items"; DROP TABLE x; --' }] } }), grpc.status.INVALID_ARGUMENT, /schema-qualified/],
      ["schema mismatch", (s) => s.send({ case: "hello", value: { tables: [{ ...ITEMS_SCHEMA, columns: ITEMS_SCHEMA.columns.map((col) => col.name === "qty" ? { ...col, type: "text" } : col) }] } }), grpc.status.FAILED_PRECONDITION, /differ from the registered/],
      ["resume cursor ahead of the log", (s) => s.send({ case: "hello", value: { tables: [ITEMS_SCHEMA], resumeCursor: 10_000n } }), grpc.status.FAILED_PRECONDITION, /ahead of the tenant log head/],
    ];
    // Register the table first so the mismatch case has something to differ from.
    const reg = await session();
    reg.close();
    for (const [what, act, code, re] of cases) {
      const s = rawStream(c.hub.grpcPort, token);
      act(s);
      const st = await s.status;
      assert.equal(st.code, code, `${what}: got ${grpc.status[st.code]} ${st.details}`);
      assert.match(st.details, re, what);
    }
    assert.equal(await logCount(), 0);
  });

  it("rejects invalid transactions one by one, storing only the valid ones", async () => {
    const s = await session();
    const bad: [string, Record<string, unknown>, RegExp][] = [
      ["unknown table", change(good, { table: "public.secrets" }), /not declared/],
      ["unknown column", change({ ...good, id: 2, evil: 1 }), /no column "evil"/],
      ["missing column", change({ id: 3, sku: "a" }), /lacks column "qty"/],
      ["wrong type", change({ ...good, id: 4, qty: "lots" }), /"qty" \(integer\) has a value of the wrong type/],
      ["fraction in an integer", change({ ...good, id: 5, qty: 1.5 }), /"qty"/],
      ["null primary key", change({ ...good, id: null }, { key: "[null]" }), /primary key column "id" is null|NOT NULL/],
      ["key of wrong arity", change({ ...good, id: 6 }, { key: "[6, 7]" }), /key must be a JSON array of 1/],
      ["row not JSON", change(good, { row: "{nope" }), /row is not JSON/],
      ["no op", change({ ...good, id: 7 }, { op: Op.UNSPECIFIED }), /op must be/],
      ["prev not JSON", change({ ...good, id: 8 }, { op: Op.UPDATE, prev: "{qty" }), /prev is not JSON/],
      ["prev naming the key", change({ ...good, id: 9 }, { op: Op.UPDATE, prev: '{"id": [1]}' }), /prev names "id", which is not a non-key column/],
      ["prev value not in a one-element array", change({ ...good, id: 10 }, { op: Op.UPDATE, prev: '{"qty": 5}' }), /one-element array/],
      ["prev on an insert", change({ ...good, id: 11 }, { prev: '{"qty": [5]}' }), /only for updates/],
    ];
    const txns = bad.map(([, ch], i) => ({ originTxn: BigInt(100 + i), lastChunk: true, changes: [ch] }));
    txns.push({ originTxn: 999n, lastChunk: true, changes: [change({ ...good, id: 42 })] });
    s.send({ case: "changes", value: { batchId: 1n, transactions: txns as never } });
    const ack = await nextAck(s);
    assert.equal(ack.outcomes.length, bad.length + 1);
    bad.forEach(([what, , re], i) => {
      assert.equal(ack.outcomes[i].outcome, Outcome.REJECTED, what);
      assert.match(ack.outcomes[i].error, re, what);
    });
    assert.equal(ack.outcomes[bad.length].outcome, Outcome.ACCEPTED);
    assert.equal(await logCount(), 1);
    // Resending is harmless: the hub already holds it.
    s.send({ case: "changes", value: { batchId: 2n, transactions: [txns[bad.length]] as never } });
    const again = await nextAck(s);
    assert.equal(again.outcomes[0].outcome, Outcome.DUPLICATE);
    assert.equal(again.outcomes[0].seq, ack.outcomes[bad.length].seq);
    assert.equal(await logCount(), 1);
    s.close();
  });

  it("rejects a transaction whose strings are not UTF-8, and takes multi-byte text that is", async () => {
    const s = await session();
    const row = (id: number) => JSON.stringify({ ...good, id, note: "Zé" });
    const txn = (id: number) => ({ originTxn: BigInt(200 + id), chunkIndex: 0, lastChunk: true, commitTimeUs: 1n, baseSeq: 0n, hlc: 1n,
      changes: [{ table: "public.items", op: Op.INSERT, key: `[${id}]`, row: row(id), prev: "" }] });
    const bytes = encodeUpstreamBatch(3n, [txn(20), txn(21)]);
    // "é" is C3 A9; C3 28 is a lead byte without its continuation.
    const at = bytes.indexOf(Buffer.from("Zé"));
    assert.ok(at > 0);
    bytes[at + 2] = 0x28;
    s.sendRaw(bytes);
    const ack = await nextAck(s);
    assert.equal(ack.outcomes[0].outcome, Outcome.REJECTED);
    assert.match(ack.outcomes[0].error, /transaction 220 change 0: row is not valid UTF-8/);
    assert.equal(ack.outcomes[1].outcome, Outcome.ACCEPTED, ack.outcomes[1].error);
    const stored = await c.hubDb.pool.query("SELECT count(*)::int AS n FROM tenant_bad.log WHERE origin_txn IN (220, 221)");
    assert.equal(stored.rows[0].n, 1);
    // origin_branch too: the stored body keeps the bytes the branch sent.
    const w = new Writer();
    w.message(2, () => {
      w.tag(1, WIRE_VARINT); w.varint(4);
      w.message(2, () => {
        w.tag(1, WIRE_VARINT); w.varint(222);
        w.tag(2, WIRE_LEN); w.varint(2); w.bytes(Buffer.from([0xc3, 0x28]));
        w.tag(5, WIRE_VARINT); w.varint(1);
        w.message(7, () => { w.string(1, "public.items"); w.tag(2, WIRE_VARINT); w.varint(Op.INSERT); w.string(3, "[22]"); w.string(4, row(22)); });
      });
    });
    const patched = w.finish();
    s.sendRaw(patched);
    const ack2 = await nextAck(s);
    assert.equal(ack2.outcomes[0].outcome, Outcome.REJECTED, ack2.outcomes[0].error);
    assert.match(ack2.outcomes[0].error, /origin_branch is not valid UTF-8/);
    s.close();
  });

  it("refuses an oversized message and an oversized batch", async () => {
    const before = await logCount();
    const s1 = await session();
    const huge = "x".repeat(5 * 1024 * 1024);
    s1.send({ case: "changes", value: { batchId: 1n, transactions: [{ originTxn: 5000n, lastChunk: true, changes: [change({ ...good, id: 5000, note: huge })] }] } as never });
    assert.equal((await s1.status).code, grpc.status.RESOURCE_EXHAUSTED);
    const s2 = await session();
    const many = Array.from({ length: 2001 }, (_, i) => change({ ...good, id: 6000 + i }));
    s2.send({ case: "changes", value: { batchId: 1n, transactions: [{ originTxn: 6000n, lastChunk: true, changes: many }] } as never });
    const st = await s2.status;
    assert.equal(st.code, grpc.status.INVALID_ARGUMENT);
    assert.match(st.details, /limit is 2000 \(send large transactions in chunks\)/);
    assert.equal(await logCount(), before);
  });

  it("answers a flood with RESOURCE_EXHAUSTED and a retry hint", async () => {
    const s = await session();
    for (let i = 0; i < 200; i++) {
      s.send({ case: "changes", value: { batchId: BigInt(i + 1), transactions: [{ originTxn: BigInt(10_000 + i), lastChunk: true, changes: [change({ ...good, id: 10_000 + i })] }] } as never });
    }
    const st = await s.status;
    assert.equal(st.code, grpc.status.RESOURCE_EXHAUSTED, st.details);
    assert.match(st.details, /wait for BatchAcks/);
    assert.equal(st.metadata.get("grpc-retry-pushback-ms")[0], "1000");
  });

  it("refuses an ack for something never sent", async () => {
    const s = await session();
    s.send({ case: "ack", value: { cursor: 1_000_000n } });
    const st = await s.status;
    assert.equal(st.code, grpc.status.INVALID_ARGUMENT);
  });
});
