/**
 * Hybrid logical clock values: upper 48 bits milliseconds since the Unix
 * epoch, lower 16 a counter (see Transaction.hlc in sync.proto).
 */
const COUNTER_BITS = 16n;
const COUNTER_MAX = (1n << COUNTER_BITS) - 1n;

export const hlcOf = (ms: number, counter = 0n): bigint => (BigInt(Math.floor(ms)) << COUNTER_BITS) | counter;
export const hlcMs = (h: bigint): number => Number(h >> COUNTER_BITS);

/**
 * The next HLC for an event at wall time `ms` that follows `last`: above
 * both, so it orders after everything its origin had seen.
 */
export function nextHlc(last: bigint, ms: number): bigint {
  const wall = hlcOf(ms);
  if (wall > last) return wall;
  // The counter overflowing into the millisecond part just moves time on by 1 ms.
  return (last & COUNTER_MAX) === COUNTER_MAX ? hlcOf(hlcMs(last) + 1) : last + 1n;
}
