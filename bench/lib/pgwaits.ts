/**
 * `--pg-waits`: what PostgreSQL's backends were doing while a section ran,
 * sampled from pg_stat_activity every few milliseconds: on CPU, or waiting
 * (for the WAL flush, a lock, the client, the disk). Seconds of statement
 * time (--pg-statements) cannot tell a writer that computes from one that
 * queues behind others' WAL flushes; this can (session 12: W1's writer on
 * A was waiting for WAL in three samples of four it was active).
 * The sampler is itself a client polling the server: it slows what it
 * watches (W1 inserts 23k → 15k rows/s at a 2 ms period), so read shares,
 * not rates, from a run with it.
 */
import pg from "pg";
import type { PgServer } from "./pg.ts";
import { formatTable } from "./report.ts";
import { sleep } from "./stats.ts";

export const WAIT_SAMPLE_MS = 5;

export interface WaitRow { db: string; query: string; wait: string; samples: number; pct: number }
export interface WaitSampler { stop(): Promise<{ samples: number; rows: WaitRow[] }> }

/** Samples every non-idle backend of the bench's databases (bsbench_*) until stop(). */
export async function startWaitSampler(s: PgServer, everyMs = WAIT_SAMPLE_MS): Promise<WaitSampler> {
  const c = new pg.Client({ connectionString: s.url("postgres") });
  await c.connect();
  const counts = new Map<string, number>();
  let samples = 0;
  let stopping = false;
  const loop = (async () => {
    while (!stopping) {
      const { rows } = await c.query(
        `SELECT datname AS db, coalesce(wait_event_type || ':' || wait_event, 'CPU') AS wait,
                left(regexp_replace(query, '\\s+', ' ', 'g'), 60) AS query
           FROM pg_stat_activity
          WHERE datname LIKE 'bsbench\\_%' AND pid <> pg_backend_pid() AND state NOT IN ('idle')`);
      samples++;
      for (const r of rows) {
        const k = JSON.stringify([String(r.db).replace(/^bsbench_/, "").replace(/_[a-z0-9]+$/, ""), r.query, r.wait]);
        counts.set(k, (counts.get(k) ?? 0) + 1);
      }
      await sleep(everyMs);
    }
  })();
  let result: Promise<{ samples: number; rows: WaitRow[] }> | null = null;
  return {
    stop() {
      stopping = true;
      result ??= loop.finally(() => c.end()).then(() => ({
        samples,
        rows: [...counts].map(([k, n]) => {
          const [db, query, wait] = JSON.parse(k) as string[];
          return { db, query, wait, samples: n, pct: samples ? (100 * n) / samples : 0 };
        }).sort((a, b) => b.samples - a.samples),
      }));
      return result;
    },
  };
}

export function formatWaits(section: string, r: { samples: number; rows: WaitRow[] }, limit = 30): string {
  return `\n## ${section}: where PostgreSQL's backends were (pg_stat_activity every ${WAIT_SAMPLE_MS} ms, ${r.samples} samples; % of samples in which a backend was so)\n` +
    formatTable(["db", "% of samples", "state", "query"],
      r.rows.slice(0, limit).map((w) => [w.db, w.pct.toFixed(1), w.wait, w.query]));
}
