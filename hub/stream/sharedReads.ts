/**
 * Fan-out without a query per session: sessions of one tenant woken by the
 * same commit all ask for the log after the same position, so identical
 * reads share one query (single flight) and a result stays reusable for a
 * moment. Reuse is always safe: committed log entries never change, and a
 * shorter-than-possible answer is just a prefix the session continues from.
 */
import type pg from "pg";
import { readAfter, type LogEntry } from "../store/log.ts";
import { metrics } from "../metrics.ts";

const KEEP_MS = 250;
const MAX_KEPT = 2000;

export type LogReader = (schema: string, seq: bigint, part: number, limit: number) => Promise<LogEntry[]>;

export function makeSharedReader(pool: pg.Pool): LogReader {
  const inFlight = new Map<string, Promise<LogEntry[]>>();
  const kept = new Map<string, { at: number; entries: LogEntry[] }>();
  return (schema, seq, part, limit) => {
    const key = `${schema}|${seq}|${part}|${limit}`;
    const hit = kept.get(key);
    if (hit && Date.now() - hit.at < KEEP_MS) return Promise.resolve(hit.entries);
    const running = inFlight.get(key);
    if (running) return running;
    metrics.logReads.inc();
    const p = readAfter(pool, schema, seq, part, limit).then((entries) => {
      if (entries.length > 0) {
        // Results are kept in the order they were read, so the expired ones
        // are at the front: drop them, or a busy tenant's log bodies pile up
        // here (tens of MiB) long after anyone could reuse them.
        const now = Date.now();
        for (const [k, v] of kept) {
          if (now - v.at < KEEP_MS && kept.size < MAX_KEPT) break;
          kept.delete(k);
        }
        kept.set(key, { at: now, entries });
      }
      return entries;
    }).finally(() => inFlight.delete(key));
    inFlight.set(key, p);
    return p;
  };
}
