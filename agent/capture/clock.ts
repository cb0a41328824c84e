/**
 * The branch's hybrid logical clock. A local transaction's HLC is stamped
 * when it is read for sending, from what was true when it was written: its
 * start time on the branch database's clock (plus the configured
 * correction) and the newest HLC applied here before it wrote (recorded by
 * the capture trigger). So it orders after everything it could have seen,
 * and an edit made offline keeps the time it was made.
 */
import { nextHlc } from "../../lib/hlc.ts";

export interface Clock {
  /** HLC for a transaction that started at `startedMs` having seen HLCs up to `seen`. */
  stamp(startedMs: number, seen: bigint): bigint;
}

export function makeClock(skewMs: number): Clock {
  let last = 0n;
  return {
    stamp(startedMs, seen) {
      last = nextHlc(last > seen ? last : seen, startedMs + skewMs);
      return last;
    },
  };
}
