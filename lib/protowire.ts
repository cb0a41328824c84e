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

  string(field: number, s: string) {
    if (s === "") return;
    const len = Buffer.byteLength(s);
    this.tag(field, WIRE_LEN);
    this.varint(len);
    this.ensure(len);
    this.pos += this.buf.write(s, this.pos, "utf8");
  }

  bytes(b: Buffer) { this.ensure(b.length); b.copy(this.buf, this.pos); this.pos += b.length; }

  /** Writes a length-delimited field whose body `f` writes; patches the length afterwards. */
  message(field: number, f: () => void) {
    this.tag(field, WIRE_LEN);
    // Reserve 5 bytes for the length (up to 2^35), then shift if shorter.
    this.ensure(5);
    const at = this.pos;
    this.pos += 5;
    f();
    const len = this.pos - at - 5;
    const lenBytes: number[] = [];
    let v = len;
    while (v > 0x7f) { lenBytes.push((v & 0x7f) | 0x80); v = Math.floor(v / 128); }
    lenBytes.push(v);
    const shift = 5 - lenBytes.length;
    if (shift > 0) this.buf.copy(this.buf, at + lenBytes.length, at + 5, this.pos);
    for (let i = 0; i < lenBytes.length; i++) this.buf[at + i] = lenBytes[i];
    this.pos -= shift;
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

/** AgentMessage{changes: ChangeBatch{batch_id, transactions}}. */
export function encodeUpstreamBatch(batchId: bigint, txns: WireTxn[]): Buffer {
  const w = new Writer();
  w.message(2, () => {
    if (batchId) { w.tag(1, WIRE_VARINT); w.varint(batchId); }
    for (const t of txns) {
      w.message(2, () => {
        if (t.originTxn) { w.tag(1, WIRE_VARINT); w.varint(t.originTxn); }
        if (t.chunkIndex) { w.tag(4, WIRE_VARINT); w.varint(t.chunkIndex); }
        if (t.lastChunk) { w.tag(5, WIRE_VARINT); w.varint(1); }
        if (t.commitTimeUs) { w.tag(6, WIRE_VARINT); w.varint(t.commitTimeUs); }
        for (const c of t.changes) {
          w.message(7, () => {
            w.string(1, c.table);
            if (c.op) { w.tag(2, WIRE_VARINT); w.varint(c.op); }
            w.string(3, c.key);
            w.string(4, c.row);
            w.string(5, c.prev);
          });
        }
        if (t.baseSeq) { w.tag(8, WIRE_VARINT); w.varint(t.baseSeq); }
        if (t.hlc) { w.tag(9, WIRE_VARINT); w.varint(t.hlc); }
      });
    }
  });
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

function decodeChange(buf: Buffer, start: number, end: number): WireChange {
  const r = new Reader(buf, start, end);
  const c: WireChange = { table: "", op: 0, key: "", row: "", prev: "" };
  while (r.pos < r.end) {
    const tag = r.small();
    const field = tag >>> 3;
    const wire = tag & 7;
    if (wire === WIRE_LEN && field >= 1 && field <= 5 && field !== 2) {
      const [s, e] = r.lenDelimited();
      const v = buf.toString("utf8", s, e);
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
  while (r.pos < r.end) {
    const tag = r.small();
    const field = tag >>> 3;
    const wire = tag & 7;
    if (field === 7 && wire === WIRE_LEN) {
      const [s, e] = r.lenDelimited();
      t.changes.push(decodeChange(buf, s, e));
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
