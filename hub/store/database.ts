import pg from "pg";
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
  const u = new URL(databaseUrl);
  const name = decodeURIComponent(u.pathname.slice(1));
  if (!/^[a-z_][a-z0-9_]{0,62}$/.test(name)) throw new Error(`database "${name}" does not exist; create it first`);
  u.pathname = "/postgres";
  const admin = new pg.Client({ connectionString: u.toString() });
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
