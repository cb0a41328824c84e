/**
 * The anchors' table and SQL shapes (../shared/anchors/lib.sh), so our figures
 * compare with theirs: public.items, the local-only `bench` schema (never
 * tracked: agents track public.items only), W1 statements, probe triggers.
 */
export const PROBE_BASE = 900_000_000_000;
export const BARRIER_BASE = 800_000_000_000;

export const ITEMS_DDL = `
CREATE TABLE public.items(
  id         bigint PRIMARY KEY,
  sku        text,
  qty        int,
  price      numeric(12,2),
  note       text,
  updated_at timestamptz);
CREATE SCHEMA bench;
CREATE SEQUENCE bench.barrier_seq START ${BARRIER_BASE + 1};
CREATE TABLE bench.probe_arrival(id bigint PRIMARY KEY, arrived_at timestamptz NOT NULL);
CREATE TABLE bench.probe_sent(id bigint PRIMARY KEY, sent_at timestamptz NOT NULL);
CREATE FUNCTION bench.probe_arrived() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO bench.probe_arrival(id, arrived_at) VALUES (NEW.id, clock_timestamp()) ON CONFLICT (id) DO NOTHING;
  RETURN NULL;
END $$;
CREATE FUNCTION bench.probe_sent_fn() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO bench.probe_sent(id, sent_at) VALUES (NEW.id, clock_timestamp()) ON CONFLICT (id) DO NOTHING;
  RETURN NULL;
END $$;`;

/**
 * Receiving side: fires inside the applying transaction's commit (deferred),
 * also under session_replication_role=replica (ENABLE ALWAYS), as the anchors'.
 */
export const ARRIVAL_TRIGGER = `
CREATE CONSTRAINT TRIGGER zz_probe_arrival AFTER INSERT ON public.items
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.id >= ${PROBE_BASE})
  EXECUTE FUNCTION bench.probe_arrived();
ALTER TABLE public.items ENABLE ALWAYS TRIGGER zz_probe_arrival;`;

/**
 * Sending side, when track_commit_timestamp is off: clock_timestamp() at the
 * end of the probe transaction (deferred to its commit), into an untracked table.
 */
export const SENT_TRIGGER = `
CREATE CONSTRAINT TRIGGER zz_probe_sent AFTER INSERT ON public.items
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.id >= ${PROBE_BASE})
  EXECUTE FUNCTION bench.probe_sent_fn();`;

export const baseRowsSql = (n: number) =>
  `INSERT INTO public.items SELECT g, 'sku-'||g, (g%1000)::int, ((g%100000)/100.0)::numeric(12,2),
     md5(g::text), '2024-01-01 00:00:00+00' FROM generate_series(1, ${n}) g`;

export type Phase = "insert" | "update" | "delete";

/** One W1 statement: a 100-row (batch) autocommit transaction, as lib.sh gen_phase_sql (series style). */
export function w1Statement(kind: Phase, a: number, z: number): string {
  switch (kind) {
    case "insert":
      return `INSERT INTO public.items(id,sku,qty,price,note,updated_at) SELECT g,'sku-'||g,(g%1000)::int,((g%100000)/100.0)::numeric(12,2),md5(g::text),clock_timestamp() FROM generate_series(${a},${z}) g`;
    case "update":
      return `UPDATE public.items SET qty=qty+1, price=price+1, note=note||'u', updated_at=clock_timestamp() WHERE id BETWEEN ${a} AND ${z}`;
    case "delete":
      return `DELETE FROM public.items WHERE id BETWEEN ${a} AND ${z}`;
  }
}

/** A phase's W1 statements over ids lo..hi, `batch` rows per transaction. */
export function w1Statements(kind: Phase, lo: number, hi: number, batch: number): string[] {
  const out: string[] = [];
  for (let a = lo; a <= hi; a += batch) out.push(w1Statement(kind, a, Math.min(a + batch - 1, hi)));
  return out;
}

/** [lo, hi] of a phase and the B-side predicate that is true once its last change arrived. */
export function phaseBounds(kind: Phase, base: number, rows: number, updates: number, deletes: number): { lo: number; hi: number; done: string } {
  switch (kind) {
    case "insert": return { lo: base + 1, hi: base + rows, done: `SELECT EXISTS(SELECT 1 FROM public.items WHERE id=${base + rows})` };
    case "update": return { lo: base + 1, hi: base + updates, done: `SELECT EXISTS(SELECT 1 FROM public.items WHERE id=${base + updates} AND note LIKE '%u')` };
    case "delete": return { lo: base + rows - deletes + 1, hi: base + rows, done: `SELECT NOT EXISTS(SELECT 1 FROM public.items WHERE id=${base + rows})` };
  }
}
