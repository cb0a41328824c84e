/** What PostgreSQL planned for statements, nested ones too, read back through auto_explain. */
import type pg from "pg";

/**
 * Runs `f` while auto_explain sends the plan of every statement `c` runs,
 * also those inside functions and triggers, as a NOTICE; returns those plans.
 * The connection keeps auto_explain loaded: release it with `release(true)`.
 */
export async function plansDuring(c: pg.PoolClient, f: () => Promise<unknown>): Promise<string[]> {
  await c.query("LOAD 'auto_explain'");
  await c.query(`SET auto_explain.log_min_duration = 0; SET auto_explain.log_nested_statements = on;
    SET auto_explain.log_level = notice; SET client_min_messages = notice`);
  const plans: string[] = [];
  const onNotice = (n: { message?: string }) => { plans.push(n.message ?? ""); };
  c.on("notice", onNotice);
  try {
    await f();
  } finally {
    c.off("notice", onNotice);
    await c.query("RESET ALL");
  }
  return plans;
}
