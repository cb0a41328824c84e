/**
 * Hand-written protobuf encoding for the two hot messages (upstream and
 * downstream ChangeBatch). protobuf-es's reflective writer costs more CPU
 * than everything else an agent does per row; these messages have a fixed,
 * simple shape. test/encode.test.ts checks the bytes against protobuf-es.
 * Field numbers are those of proto/branchsync/v1/sync.proto.
 */

export const WIRE_VARINT = 0;
export const WIRE_LEN = 2;

/** Growable byte writer. */
export class Writer {
  private buf = Buffer.allocUnsafe(64 * 1024);
  private pos = 0;

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

  finish(): Buffer { return Buffer.from(this.buf.subarray(0, this.pos)); }
}

export interface WireChange { table: string; op: number; key: string; row: string }
export interface WireTxn { originTxn: bigint; chunkIndex: number; lastChunk: boolean; commitTimeUs: bigint; changes: WireChange[] }

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
          });
        }
      });
    }
  });
  return w.finish();
}
