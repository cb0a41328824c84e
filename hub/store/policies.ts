/**
 * Per-table conflict policies, stored with the table registry. Appends read
 * them through a short cache: a change of policy applies to conflicts
 * detected from at most POLICY_TTL_MS later on every replica.
 */
import type pg from "pg";
import { StatusError, Status } from "../errors.ts";
import { STRATEGIES, DEFAULT_POLICY, type Policy, type Strategy } from "../conflict/resolve.ts";
import type { TableDef } from "./tables.ts";
import { BRANCH_ID } from "../../lib/ident.ts";

const POLICY_TTL_MS = 1000;
const COUNTER_TYPE = /^(smallint|integer|bigint|numeric(\(\d+(,\d+)?\))?)$/;

const cache = new WeakMap<pg.Pool, Map<string, { at: number; policies: Promise<Map<string, Policy>> }>>();

export async function loadPolicies(pool: pg.Pool, schema: string): Promise<Map<string, Policy>> {
  let bySchema = cache.get(pool);
  if (!bySchema) { bySchema = new Map(); cache.set(pool, bySchema); }
  const hit = bySchema.get(schema);
  if (hit && Date.now() - hit.at < POLICY_TTL_MS) return hit.policies;
  const policies = pool.query(`SELECT name, strategy, branch_priority, delta_columns FROM ${schema}.tables`).then(({ rows }) =>
    new Map<string, Policy>(rows.map((r) => [r.name, { strategy: r.strategy as Strategy, branchPriority: r.branch_priority, deltaColumns: r.delta_columns }])));
  bySchema.set(schema, { at: Date.now(), policies });
  policies.catch(() => bySchema!.delete(schema));
  return policies;
}

export const policyOf = (policies: Map<string, Policy>, table: string): Policy => policies.get(table) ?? DEFAULT_POLICY;

export interface TablePolicyRow extends Policy { table: string }

export async function listPolicies(pool: pg.Pool, schema: string): Promise<TablePolicyRow[]> {
  const { rows } = await pool.query(`SELECT name, strategy, branch_priority, delta_columns FROM ${schema}.tables ORDER BY name`);
  return rows.map((r) => ({ table: r.name, strategy: r.strategy, branchPriority: r.branch_priority, deltaColumns: r.delta_columns }));
}

export async function setPolicy(pool: pg.Pool, schema: string, p: TablePolicyRow): Promise<TablePolicyRow> {
  if (!STRATEGIES.includes(p.strategy)) {
    throw new StatusError(Status.INVALID_ARGUMENT, `unknown strategy "${p.strategy}"; use one of ${STRATEGIES.join(", ")}`);
  }
  const { rows } = await pool.query(`SELECT definition FROM ${schema}.tables WHERE name = $1`, [p.table]);
  if (rows.length === 0) throw new StatusError(Status.NOT_FOUND, `table "${p.table}" is not registered in this tenant (a branch declares it when its agent connects)`);
  const def = rows[0].definition as TableDef;
  for (const c of p.deltaColumns) {
    const col = def.columns.find((x) => x.name === c);
    if (!col) throw new StatusError(Status.INVALID_ARGUMENT, `table ${p.table} has no column "${c}"`);
    if (def.primaryKey.includes(c)) throw new StatusError(Status.INVALID_ARGUMENT, `delta column "${c}" is part of the primary key`);
    if (!COUNTER_TYPE.test(col.type)) throw new StatusError(Status.INVALID_ARGUMENT, `delta column "${c}" is ${col.type}; counters must be smallint, integer, bigint or numeric`);
  }
  for (const b of p.branchPriority) {
    if (!BRANCH_ID.test(b)) throw new StatusError(Status.INVALID_ARGUMENT, `"${b}" is not a valid branch id`);
  }
  if (p.strategy === "branch-priority" && p.branchPriority.length === 0) {
    throw new StatusError(Status.INVALID_ARGUMENT, "branch-priority needs branch ids in priority order");
  }
  await pool.query(`UPDATE ${schema}.tables SET strategy = $2, branch_priority = $3, delta_columns = $4 WHERE name = $1`,
    [p.table, p.strategy, p.branchPriority, p.deltaColumns]);
  cache.get(pool)?.delete(schema);
  return { ...p };
}
