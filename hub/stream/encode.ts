/**
 * Builds downstream ChangeBatch messages straight from stored log bytes.
 * The log stores each transaction as its encoded protobuf with seq unset;
 * protobuf lets us append the seq field to those bytes, and wrap them in
 * ChangeBatch and HubMessage by hand. Fanning a transaction out to fifty
 * branches thus costs fifty memcpys, not fifty decode/encode round trips.
 */

// Field numbers from proto/branchsync/v1/sync.proto.
const HUB_MESSAGE_CHANGES = 2;
const CHANGE_BATCH_TRANSACTIONS = 2;
const CHANGE_BATCH_CURSOR_AFTER = 3;
const CHANGE_BATCH_OWN_SEQUENCED = 4;
const TRANSACTION_SEQ = 3;

const WIRE_VARINT = 0;
const WIRE_LEN = 2;

function varint(v: bigint | number, out: number[]): void {
  let n = BigInt(v);
  while (n > 0x7fn) {
    out.push(Number(n & 0x7fn) | 0x80);
    n >>= 7n;
  }
  out.push(Number(n));
}

function header(field: number, wire: number, len?: number): Buffer {
  const out: number[] = [];
  varint((field << 3) | wire, out);
  if (len !== undefined) varint(len, out);
  return Buffer.from(out);
}

function varintField(field: number, v: bigint): Buffer {
  const out: number[] = [];
  varint((field << 3) | WIRE_VARINT, out);
  varint(v, out);
  return Buffer.from(out);
}

export interface StoredTxn { seq: bigint; body: Buffer }
export interface OwnSeq { originTxn: bigint; seq: bigint }

/** The encoded HubMessage{changes: ChangeBatch{transactions, cursor_after, own_sequenced}}. */
export function encodeChangeBatch(txns: StoredTxn[], cursorAfter: bigint, own: OwnSeq[] = []): Buffer {
  const parts: Buffer[] = [];
  for (const t of txns) {
    const seq = varintField(TRANSACTION_SEQ, t.seq);
    parts.push(header(CHANGE_BATCH_TRANSACTIONS, WIRE_LEN, t.body.length + seq.length), t.body, seq);
  }
  if (cursorAfter > 0n) parts.push(varintField(CHANGE_BATCH_CURSOR_AFTER, cursorAfter));
  for (const o of own) {
    const body = Buffer.concat([varintField(1, o.originTxn), varintField(2, o.seq)]);
    parts.push(header(CHANGE_BATCH_OWN_SEQUENCED, WIRE_LEN, body.length), body);
  }
  const batch = Buffer.concat(parts);
  return Buffer.concat([header(HUB_MESSAGE_CHANGES, WIRE_LEN, batch.length), batch]);
}
