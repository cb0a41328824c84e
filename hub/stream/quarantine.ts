/**
 * A session's side of the quarantine: records the branch's Nacks, passes
 * operator requests (retry, discard) to the agent, and records its answers.
 * Only sessions of branches with unsettled items poll for requests, so ten
 * thousand healthy branches cost nothing here.
 */
import { create } from "@bufbuild/protobuf";
import type pg from "pg";
import {
  HubMessageSchema, QuarantineOutcome, QuarantineVerb, type HubMessage, type Nack, type QuarantineResult,
} from "../../gen/branchsync/v1/sync_pb.ts";
import type { Logger } from "../../lib/log.ts";
import { recordNack, hasOpenItems, requestedActions, settle, buildRepair } from "../store/quarantine.ts";
import { metrics } from "../metrics.ts";

const POLL_MS = 1000;

export interface QuarantineDesk {
  start(): Promise<void>;
  onNack(n: Nack): Promise<void>;
  onResult(r: QuarantineResult): Promise<void>;
}

export interface DeskDeps {
  pool: pg.Pool;
  schema: string;
  branch: string;
  log: Logger;
  signal: AbortSignal;
  send(m: HubMessage): Promise<void>;
}

export function makeQuarantineDesk(d: DeskDeps): QuarantineDesk {
  const asked = new Set<string>();
  let timer: NodeJS.Timeout | null = null;
  d.signal.addEventListener("abort", () => { if (timer) clearTimeout(timer); timer = null; });

  async function poll() {
    timer = null;
    if (d.signal.aborted) return;
    for (const a of await requestedActions(d.pool, d.schema, d.branch)) {
      if (asked.has(a.seq.toString())) continue;
      asked.add(a.seq.toString());
      const repair = a.status === "retry" ? await buildRepair(d.pool, d.schema, a.seq) : undefined;
      await d.send(create(HubMessageSchema, { payload: { case: "quarantineAction", value: {
        seq: a.seq, verb: a.status === "retry" ? QuarantineVerb.RETRY : QuarantineVerb.DISCARD,
        repair: repair ? { seq: repair.seq, lastChunk: true, changes: repair.changes } : undefined,
      } } }));
    }
    schedule();
  }

  function schedule() {
    if (timer || d.signal.aborted) return;
    timer = setTimeout(() => { poll().catch((err) => { d.log.warn({ err }, "quarantine poll failed"); schedule(); }); }, POLL_MS);
  }

  return {
    async start() {
      if (await hasOpenItems(d.pool, d.schema, d.branch)) schedule();
    },
    async onNack(n) {
      await recordNack(d.pool, d.schema, d.branch, n);
      metrics.quarantined.inc();
      d.log.warn({ seq: n.seq.toString(), sqlstate: n.sqlstate }, "branch quarantined a transaction");
      schedule();
    },
    async onResult(r) {
      asked.delete(r.seq.toString());
      const status = r.outcome === QuarantineOutcome.APPLIED ? "applied" : r.outcome === QuarantineOutcome.DISCARDED ? "discarded" : "quarantined";
      await settle(d.pool, d.schema, d.branch, r.seq, status, r.outcome === QuarantineOutcome.FAILED ? r.error : undefined);
    },
  };
}
