/**
 * Fan-out without a query per session: sessions of one tenant woken by the
 * same commit all ask for the log after the same position, so identical
 * reads share one query (single flight) and a result stays reusable for a
 * moment. Reuse is always safe: committed log entries never change, and a
 * shorter-than-possible answer is just a prefix the session continues from.
 *
 * Entries this replica has just committed are remembered as they were
 * written, so the sessions following the log read them without a query
 * (and without the bodies' round trip through PostgreSQL's hex text).
 * Entries other replicas appended are not here, and are read as before.
 */
import type pg from "pg";
import { readAfter, type LogEntry } from "../store/log.ts";
import { metrics } from "../metrics.ts";

const KEEP_MS = 250;
const MAX_KEPT = 2000;
/** Bodies remembered from this replica's appends, across tenants, at most. */
const MAX_RECENT_BYTES = 16 * 1024 * 1024;
/** Part number past any real part: reading "after (seq, AFTER_ALL_PARTS)" starts at seq + 1. */
export const AFTER_ALL_PARTS = 2_147_483_647;

export interface LogReader {
  /** Log entries after (seq, part), in order; at most `limit`. */
  read(schema: string, seq: bigint, part: number, limit: number): Promise<LogEntry[]>;
  /** Whole single-part entries this replica has committed, in sequence order. */
  committed(schema: string, entries: LogEntry[]): void;
}

export function makeSharedReader(pool: pg.Pool): LogReader {
  const inFlight = new Map<string, Promise<LogEntry[]>>();
  const kept = new Map<string, { at: number; entries: LogEntry[] }>();
  /**
   * Recently committed entries of all tenants by `schema|seq`, in insertion
   * order, so one prune from the front bounds them all (an idle tenant's
   * entries go as others append).
   */
  const recent = new Map<string, { at: number; entry: LogEntry }>();
  let recentBytes = 0;

  // Oldest first in insertion order, so the expired ones are at the front:
  // drop them, or a busy tenant's bodies pile up here long after anyone
  // could use them.
  function prune<T extends { at: number }>(m: Map<unknown, T>, now: number, over = () => false, dropped = (_v: T) => {}) {
    for (const [k, v] of m) {
      if (now - v.at < KEEP_MS && m.size < MAX_KEPT && !over()) break;
      m.delete(k);
      dropped(v);
    }
  }

  function fromRecent(schema: string, seq: bigint, part: number, limit: number): LogEntry[] {
    if (recent.size === 0 || part !== AFTER_ALL_PARTS) return [];
    const out: LogEntry[] = [];
    for (let s = seq + 1n; out.length < limit; s++) {
      const hit = recent.get(`${schema}|${s}`);
      if (!hit) break;
      out.push(hit.entry);
    }
    return out;
  }

  return {
    committed(schema, entries) {
      const now = Date.now();
      for (const entry of entries) { recent.set(`${schema}|${entry.seq}`, { at: now, entry }); recentBytes += entry.body.length; }
      prune(recent, now, () => recentBytes > MAX_RECENT_BYTES, (v) => { recentBytes -= v.entry.body.length; });
    },
    read(schema, seq, part, limit) {
      const mine = fromRecent(schema, seq, part, limit);
      if (mine.length > 0) return Promise.resolve(mine);
      const key = `${schema}|${seq}|${part}|${limit}`;
      const hit = kept.get(key);
      if (hit && Date.now() - hit.at < KEEP_MS) return Promise.resolve(hit.entries);
      const running = inFlight.get(key);
      if (running) return running;
      metrics.logReads.inc();
      const p = readAfter(pool, schema, seq, part, limit).then((entries) => {
        if (entries.length > 0) {
          const now = Date.now();
          prune(kept, now);
          kept.set(key, { at: now, entries });
        }
        return entries;
      }).finally(() => inFlight.delete(key));
      inFlight.set(key, p);
      return p;
    },
  };
}
