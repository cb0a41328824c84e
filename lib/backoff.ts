/**
 * Reconnect backoff after gRPC's connection-backoff spec
 * (doc/connection-backoff.md): exponential growth with a cap. We use "full
 * jitter" (uniform in [0, current)) so that a thousand branches cut off by
 * one hub restart do not come back in lockstep.
 */
export const INITIAL_BACKOFF_MS = 1000;
export const MULTIPLIER = 1.6;
export const MAX_BACKOFF_MS = 120_000;

export interface Backoff {
  /** Milliseconds to wait before the next attempt; grows each call. */
  next(): number;
  /** Call after a session was established, to start small again. */
  reset(): void;
}

export function makeBackoff(opts: { initialMs?: number; maxMs?: number; random?: () => number } = {}): Backoff {
  const initial = opts.initialMs ?? INITIAL_BACKOFF_MS;
  const max = opts.maxMs ?? MAX_BACKOFF_MS;
  const random = opts.random ?? Math.random;
  let current = initial;
  return {
    next() {
      const wait = Math.floor(random() * current);
      current = Math.min(current * MULTIPLIER, max);
      return wait;
    },
    reset() { current = initial; },
  };
}
