import pg from "pg";
import { parseIntoClientConfig } from "pg-connection-string";
import type { Logger } from "../../lib/log.ts";

/** Creates the hub database on first start, so `npm start` just works. */
export async function ensureDatabase(databaseUrl: string, log: Logger): Promise<void> {
  const c = new pg.Client({ connectionString: databaseUrl });
  try {
    await c.connect();
    await c.end();
    return;
  } catch (e) {
    if ((e as { code?: string }).code !== "3D000") throw e;
  }
  // Parsed as node-postgres parses it: a libpq URL may name no host (a
  // Unix socket directory in ?host=), which WHATWG URL refuses.
  const cfg = parseIntoClientConfig(databaseUrl);
  const name = cfg.database ?? "";
  if (!/^[a-z_][a-z0-9_]{0,62}$/.test(name)) throw new Error(`database "${name}" does not exist; create it first`);
  const admin = new pg.Client({ ...cfg, database: "postgres" });
  await admin.connect();
  try {
    await admin.query(`CREATE DATABASE "${name}"`);
    log.info({ database: name }, "created hub database");
  } catch (e) {
    if ((e as { code?: string }).code !== "42P04") throw e;
  } finally {
    await admin.end();
  }
}
