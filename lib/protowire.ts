/**
 * Hand-written protobuf encoding for the two hot messages (upstream and
 * downstream ChangeBatch). protobuf-es's reflective writer costs more CPU
 * than everything else an agent does per row; these messages have a fixed,
 * simple shape. test/encode.test.ts checks the bytes against protobuf-es.
 * Field numbers are those of proto/branchsync/v1/sync.proto.
 */
import { isUtf8 } from "node:buffer";

export const WIRE_VARINT = 0;
export const WIRE_LEN = 2;

const SCRATCH_BYTES = 64 * 1024;
/**
 * One scratch buffer for every encode: a fresh 64 KiB per message (each
 * upstream batch, each stored transaction) was tens of MB/s of external
 * memory on a busy branch or hub, and V8 answers that with back-to-back
 * full collections, each a pause every message in flight waits out. A
 * Writer takes it and finish() gives it back; a Writer made meanwhile
 * gets its own.
 */
let scratch: Buffer | null = Buffer.allocUnsafe(SCRATCH_BYTES);

/** Bytes of the varint of a non-negative length. */
function varintSize(n: number): number {
  return n < 0x80 ? 1 : n < 0x4000 ? 2 : n < 0x200000 ? 3 : n < 0x10000000 ? 4 : 5;
}

/** Growable byte writer; finish() once. */
export class Writer {
  private buf: Buffer;
  private pos = 0;

  constructor() {
    this.buf = scratch ?? Buffer.allocUnsafe(SCRATCH_BYTES);
    scratch = null;
  }

  private ensure(n: number) {
    if (this.pos + n <= this.buf.length) return;
    const next = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.pos + n));
    this.buf.copy(next, 0, 0, this.pos);
    this.buf = next;
  }

  get length() { return this.pos; }

  varint(v: number | bigint) {
    this.ensure(10);
    if (typeof v === "number" && v >= 0 && v < 2 ** 31) {
      while (v > 0x7f) { this.buf[this.pos++] = (v & 0x7f) | 0x80; v >>>= 7; }
      this.buf[this.pos++] = v;
      return;
    }
    let n = BigInt.asUintN(64, BigInt(v));
    while (n > 0x7fn) { this.buf[this.pos++] = Number(n & 0x7fn) | 0x80; n >>= 7n; }
    this.buf[this.pos++] = Number(n);
  }

  tag(field: number, wire: number) { this.varint((field << 3) | wire); }

  /** A varint field, left out when zero (proto3's default). */
  uint(field: number, v: number | bigint) { if (v) { this.tag(field, WIRE_VARINT); this.varint(v); } }

  /**
   * A string field. Its UTF-8 length is at most 3 bytes per UTF-16 unit,
   * which bounds the size of the length varint: the string is written
   * straight after a reservation of that size (no separate byteLength pass
   * over it) and moved back in the rare case it came out shorter.
   */
  string(field: number, s: string) {
    if (s === "") return;
    const max = s.length * 3;
    const at = this.begin(field, varintSize(max));
    this.ensure(max);
    this.pos += this.buf.write(s, this.pos, "utf8");
    this.end(at, varintSize(max));
  }

  /** Pre-encoded bytes (a field with its tag). */
  raw(b: Uint8Array) { this.ensure(b.length); this.buf.set(b, this.pos); this.pos += b.length; }

  /** Opens a length-delimited field; end(at, guess) writes its length. Guess the length's varint size right and nothing moves. */
  begin(field: number, guess: number): number {
    this.tag(field, WIRE_LEN);
    this.ensure(guess);
    const at = this.pos;
    this.pos += guess;
    return at;
  }

  end(at: number, guess: number) {
    const len = this.pos - at - guess;
    const k = varintSize(len);
    if (k !== guess) {
      if (k > guess) this.ensure(k - guess);
      this.buf.copyWithin(at + k, at + guess, this.pos);
      this.pos += k - guess;
    }
    let v = len;
    let i = at;
    while (v > 0x7f) { this.buf[i++] = (v & 0x7f) | 0x80; v = Math.floor(v / 128); }
    this.buf[i] = v;
  }

  bytes(b: Buffer) { this.ensure(b.length); b.copy(this.buf, this.pos); this.pos += b.length; }

  /** Writes a length-delimited field whose body `f` writes; patches the length afterwards. */
  message(field: number, f: () => void, guess = 3) {
    const at = this.begin(field, guess);
    f();
    this.end(at, guess);
  }

  finish(): Buffer {
    const out = Buffer.from(this.buf.subarray(0, this.pos));
    // A buffer grown for one huge message is not kept.
    if (this.buf.length <= 4 * SCRATCH_BYTES) scratch = this.buf;
    return out;
  }
}

export interface WireChange {
  table: string; op: number; key: string; row: string; prev: string;
  /** Set by the decoder when that field's bytes are not UTF-8 (they were decoded with U+FFFD in their place). */
  notUtf8?: "table" | "key" | "row" | "prev";
}
export interface WireTxn {
  originTxn: bigint; chunkIndex: number; lastChunk: boolean; commitTimeUs: bigint; changes: WireChange[];
  baseSeq: bigint; hlc: bigint;
}

/** Change.table fields (tag, length, name) already encoded: a batch names few tables many times. */
const tableFields = new Map<string, Buffer>();

function tableField(table: string): Buffer {
  let b = tableFields.get(table);
  if (!b) {
    const w = new Writer();
    w.string(1, table);
    b = w.finish();
    if (tableFields.size >= 1024) tableFields.clear();
    tableFields.set(table, b);
  }
  return b;
}

/** AgentMessage{changes: ChangeBatch{batch_id, transactions}}. */
export function encodeUpstreamBatch(batchId: bigint, txns: WireTxn[]): Buffer {
  const w = new Writer();
  const batch = w.begin(2, 3);
  w.uint(1, batchId);
  for (const t of txns) {
    const txn = w.begin(2, 3);
    w.uint(1, t.originTxn);
    w.uint(4, t.chunkIndex);
    w.uint(5, t.lastChunk ? 1 : 0);
    w.uint(6, t.commitTimeUs);
    let table = "";
    let tableBytes: Buffer | null = null;
    for (const c of t.changes) {
      // Rows are mostly 128 B to 16 KiB: a 2-byte length.
      const change = w.begin(7, 2);
      if (c.table !== "") {
        if (c.table !== table) { table = c.table; tableBytes = tableField(table); }
        w.raw(tableBytes!);
      }
      w.uint(2, c.op);
      w.string(3, c.key);
      w.string(4, c.row);
      w.string(5, c.prev);
      w.end(change, 2);
    }
    w.uint(8, t.baseSeq);
    w.uint(9, t.hlc);
    w.end(txn, 3);
  }
  w.end(batch, 3);
  return w.finish();
}

/** Minimal protobuf reader over a Buffer. */
class Reader {
  pos: number;
  constructor(readonly buf: Buffer, start = 0, readonly end = buf.length) { this.pos = start; }

  varint(): bigint {
    let shift = 0n;
    let result = 0n;
    for (;;) {
      if (this.pos >= this.end) throw new Error("truncated varint");
      const b = this.buf[this.pos++];
      result |= BigInt(b & 0x7f) << shift;
      if (b < 0x80) return result;
      shift += 7n;
      if (shift > 63n) throw new Error("varint too long");
    }
  }

  /** A varint known to be small (tags, lengths, enums, chunk indexes). */
  small(): number {
    let result = 0;
    let mul = 1;
    for (;;) {
      if (this.pos >= this.end) throw new Error("truncated varint");
      const b = this.buf[this.pos++];
      result += (b & 0x7f) * mul;
      if (b < 0x80) return result;
      mul *= 128;
      if (mul > 2 ** 49) throw new Error("varint too large");
    }
  }

  lenDelimited(): [number, number] {
    const len = this.small();
    const start = this.pos;
    if (start + len > this.end) throw new Error("truncated field");
    this.pos += len;
    return [start, start + len];
  }

  skip(wire: number) {
    if (wire === WIRE_VARINT) this.varint();
    else if (wire === WIRE_LEN) this.lenDelimited();
    else if (wire === 1) this.pos += 8;
    else if (wire === 5) this.pos += 4;
    else throw new Error(`unsupported wire type ${wire}`);
    if (this.pos > this.end) throw new Error("truncated field");
  }
}

export interface DecodedTxn extends WireTxn {
  originBranch: string;
  /** origin_branch's bytes are not UTF-8. */
  originBranchNotUtf8?: boolean;
  seq: bigint;
  /** The transaction's own encoded bytes, as received. */
  raw: Buffer;
}

/** The previous change's table, so a batch of one table's rows decodes its name once. */
interface TableMemo { start: number; end: number; name: string }

/** A Change.table value: the same bytes as the previous change's give the same string, decoded once. */
function tableName(buf: Buffer, s: number, e: number, memo: TableMemo): string {
  if (e - s === memo.end - memo.start && buf.compare(buf, memo.start, memo.end, s, e) === 0) return memo.name;
  memo.start = s; memo.end = e; memo.name = buf.toString("utf8", s, e);
  return memo.name;
}

function decodeChange(buf: Buffer, start: number, end: number, memo: TableMemo): WireChange {
  const r = new Reader(buf, start, end);
  const c: WireChange = { table: "", op: 0, key: "", row: "", prev: "" };
  while (r.pos < end) {
    const tag = r.small();
    const field = tag >>> 3;
    const wire = tag & 7;
    if (wire === WIRE_LEN && field >= 1 && field <= 5 && field !== 2) {
      const [s, e] = r.lenDelimited();
      const v = field === 1 ? tableName(buf, s, e, memo) : buf.toString("utf8", s, e);
      if (field === 1) c.table = v; else if (field === 3) c.key = v; else if (field === 4) c.row = v; else c.prev = v;
      // Decoding puts U+FFFD wherever bytes are not UTF-8; only then is
      // there something to check (the text may hold a real U+FFFD).
      if (v.indexOf("\uFFFD") >= 0 && !c.notUtf8 && !isUtf8(buf.subarray(s, e))) {
        c.notUtf8 = field === 1 ? "table" : field === 3 ? "key" : field === 4 ? "row" : "prev";
      }
    } else if (field === 2 && wire === WIRE_VARINT) {
      c.op = r.small();
    } else r.skip(wire);
  }
  return c;
}

export function decodeTxn(buf: Buffer, start: number, end: number): DecodedTxn {
  const r = new Reader(buf, start, end);
  const t: DecodedTxn = {
    originTxn: 0n, originBranch: "", seq: 0n, chunkIndex: 0, lastChunk: false, commitTimeUs: 0n, changes: [],
    baseSeq: 0n, hlc: 0n, raw: buf.subarray(start, end),
  };
  const memo: TableMemo = { start: 0, end: -1, name: "" };
  while (r.pos < r.end) {
    const tag = r.small();
    const field = tag >>> 3;
    const wire = tag & 7;
    if (field === 7 && wire === WIRE_LEN) {
      const [s, e] = r.lenDelimited();
      t.changes.push(decodeChange(buf, s, e, memo));
    } else if (field === 1 && wire === WIRE_VARINT) t.originTxn = r.varint();
    else if (field === 2 && wire === WIRE_LEN) {
      const [s, e] = r.lenDelimited();
      t.originBranch = buf.toString("utf8", s, e);
      // The hub stores the bytes as received (withOriginBranch only appends the true one).
      if (t.originBranch.indexOf("\uFFFD") >= 0 && !isUtf8(buf.subarray(s, e))) t.originBranchNotUtf8 = true;
    }
    else if (field === 3 && wire === WIRE_VARINT) t.seq = r.varint();
    else if (field === 4 && wire === WIRE_VARINT) t.chunkIndex = r.small();
    else if (field === 5 && wire === WIRE_VARINT) t.lastChunk = r.small() !== 0;
    else if (field === 6 && wire === WIRE_VARINT) t.commitTimeUs = BigInt.asIntN(64, r.varint());
    else if (field === 8 && wire === WIRE_VARINT) t.baseSeq = r.varint();
    else if (field === 9 && wire === WIRE_VARINT) t.hlc = r.varint();
    else r.skip(wire);
  }
  return t;
}

export interface DecodedBatch {
  batchId: bigint;
  transactions: DecodedTxn[];
  cursorAfter: bigint;
  ownSequenced: { originTxn: bigint; seq: bigint }[];
}

/**
 * If `buf` is an AgentMessage/HubMessage whose payload is `changes` (field
 * 2 in both), decodes its ChangeBatch; otherwise returns null and the
 * caller uses protobuf-es for the rarer messages.
 */
export function decodeChangesEnvelope(buf: Buffer): DecodedBatch | null {
  const r = new Reader(buf);
  let batch: DecodedBatch | null = null;
  while (r.pos < r.end) {
    const tag = r.small();
    const field = tag >>> 3;
    const wire = tag & 7;
    if (field !== 2 || wire !== WIRE_LEN) return null;
    const [s, e] = r.lenDelimited();
    batch ??= { batchId: 0n, transactions: [], cursorAfter: 0n, ownSequenced: [] };
    const br = new Reader(buf, s, e);
    while (br.pos < br.end) {
      const t2 = br.small();
      const f2 = t2 >>> 3;
      const w2 = t2 & 7;
      if (f2 === 2 && w2 === WIRE_LEN) { const [ts, te] = br.lenDelimited(); batch.transactions.push(decodeTxn(buf, ts, te)); }
      else if (f2 === 1 && w2 === WIRE_VARINT) batch.batchId = br.varint();
      else if (f2 === 3 && w2 === WIRE_VARINT) batch.cursorAfter = br.varint();
      else if (f2 === 4 && w2 === WIRE_LEN) {
        const [os, oe] = br.lenDelimited();
        const or = new Reader(buf, os, oe);
        const own = { originTxn: 0n, seq: 0n };
        while (or.pos < or.end) {
          const t3 = or.small();
          if (t3 === ((1 << 3) | WIRE_VARINT)) own.originTxn = or.varint();
          else if (t3 === ((2 << 3) | WIRE_VARINT)) own.seq = or.varint();
          else or.skip(t3 & 7);
        }
        batch.ownSequenced.push(own);
      }
      else br.skip(w2);
    }
  }
  return batch;
}

/** Stored form of an upstream transaction: its bytes with origin_branch forced (last field wins). */
export function withOriginBranch(raw: Buffer, branch: string): Buffer {
  const w = new Writer();
  w.bytes(raw);
  w.string(2, branch);
  return w.finish();
}

/**
 * Acks, the other half of the traffic: one BatchAck per upstream batch and
 * one Ack per applied downstream batch. Through protobuf-es, create() plus
 * toBinary()/fromBinary() of these small messages cost the hub about as
 * much as the rest of a small batch's handling.
 */
export interface WireOutcome { originTxn: bigint; chunkIndex: number; outcome: number; seq: bigint; error: string }

/** HubMessage{batch_ack: BatchAck{batch_id, outcomes}}. */
export function encodeBatchAck(batchId: bigint, outcomes: readonly WireOutcome[]): Buffer {
  const w = new Writer();
  const ack = w.begin(3, 2);
  w.uint(1, batchId);
  for (const o of outcomes) {
    const at = w.begin(2, 1);
    w.uint(1, o.originTxn);
    w.uint(2, o.chunkIndex);
    w.uint(3, o.outcome);
    w.uint(4, o.seq);
    w.string(5, o.error);
    w.end(at, 1);
  }
  w.end(ack, 2);
  return w.finish();
}

/** AgentMessage{ack: Ack{cursor}}. */
export function encodeAck(cursor: bigint): Buffer {
  const w = new Writer();
  const at = w.begin(3, 1);
  w.uint(1, cursor);
  w.end(at, 1);
  return w.finish();
}

/**
 * The body of the message's only field when that is `field`, length-delimited;
 * null for anything else (other payloads, several fields), which the caller
 * leaves to protobuf-es.
 */
function onlyField(buf: Buffer, field: number): Reader | null {
  const r = new Reader(buf);
  if (r.pos >= r.end || r.small() !== ((field << 3) | WIRE_LEN)) return null;
  const [s, e] = r.lenDelimited();
  return e === buf.length ? new Reader(buf, s, e) : null;
}

/** An AgentMessage that is exactly an Ack with known fields, or null. */
export function decodeAckEnvelope(buf: Buffer): { cursor: bigint } | null {
  const r = onlyField(buf, 3);
  if (!r) return null;
  const ack = { cursor: 0n };
  while (r.pos < r.end) {
    if (r.small() !== ((1 << 3) | WIRE_VARINT)) return null;
    ack.cursor = BigInt.asUintN(64, r.varint());
  }
  return ack;
}

/** A HubMessage that is exactly a BatchAck with known fields, or null. */
export function decodeBatchAckEnvelope(buf: Buffer): { batchId: bigint; outcomes: WireOutcome[] } | null {
  const r = onlyField(buf, 3);
  if (!r) return null;
  const ack = { batchId: 0n, outcomes: [] as WireOutcome[] };
  while (r.pos < r.end) {
    const tag = r.small();
    if (tag === ((1 << 3) | WIRE_VARINT)) { ack.batchId = BigInt.asUintN(64, r.varint()); continue; }
    if (tag !== ((2 << 3) | WIRE_LEN)) return null;
    const [s, e] = r.lenDelimited();
    const or = new Reader(buf, s, e);
    const o: WireOutcome = { originTxn: 0n, chunkIndex: 0, outcome: 0, seq: 0n, error: "" };
    while (or.pos < or.end) {
      const t = or.small();
      if (t === ((1 << 3) | WIRE_VARINT)) o.originTxn = BigInt.asUintN(64, or.varint());
      else if (t === ((2 << 3) | WIRE_VARINT)) o.chunkIndex = Number(BigInt.asUintN(32, or.varint()));
      else if (t === ((3 << 3) | WIRE_VARINT)) o.outcome = Number(BigInt.asIntN(32, or.varint()));
      else if (t === ((4 << 3) | WIRE_VARINT)) o.seq = BigInt.asUintN(64, or.varint());
      else if (t === ((5 << 3) | WIRE_LEN)) {
        const [ss, se] = or.lenDelimited();
        if (!isUtf8(buf.subarray(ss, se))) return null;
        o.error = buf.toString("utf8", ss, se);
      } else return null;
    }
    ack.outcomes.push(o);
  }
  return ack;
}
