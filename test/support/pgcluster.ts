/**
 * A PostgreSQL cluster of a test's own (Debian's pg_createcluster; needs
 * root, as CI has), for tests that crash the server: the shared one must
 * stay up for everyone else.
 */
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import fs from "node:fs";
import { randomBytes } from "node:crypto";
import pg from "pg";
import { freePort } from "./ports.ts";

const run = promisify(execFile);
const VERSION = "15";

export interface ThrowawayCluster {
  /** postgresql://…:port, without a database. */
  base: string;
  /** Immediate shutdown: no checkpoint, and WAL not yet written is gone, as in a crash. */
  crash(): Promise<void>;
  /** Starts it again (crash recovery) and waits until it takes connections. */
  start(): Promise<void>;
  drop(): Promise<void>;
}

const ctl = (name: string, ...args: string[]) => run("pg_ctlcluster", ["--skip-systemctl-redirect", VERSION, name, ...args]);

export async function throwawayCluster(conf: string[] = []): Promise<ThrowawayCluster> {
  const name = `bstest_${randomBytes(3).toString("hex")}`;
  const port = await freePort(5560);
  await run("pg_createcluster", [VERSION, name, "-p", String(port), "--", "-A", "trust"]);
  const file = `/etc/postgresql/${VERSION}/${name}/conf.d/zz-test.conf`;
  fs.writeFileSync(file, ["listen_addresses = '127.0.0.1'", "log_min_messages = warning", ...conf, ""].join("\n"));
  await run("chown", ["postgres:postgres", file]);
  const base = `postgresql://postgres@127.0.0.1:${port}`;
  const ready = async () => {
    for (let i = 0; ; i++) {
      const c = new pg.Client({ connectionString: `${base}/postgres` });
      try { await c.connect(); await c.end(); return; } catch (e) {
        await c.end().catch(() => undefined);
        if (i > 100) throw e;
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  };
  const start = async () => { await ctl(name, "start"); await ready(); };
  await start();
  return {
    base,
    crash: async () => { await ctl(name, "stop", "-m", "immediate"); },
    start,
    async drop() {
      await ctl(name, "stop", "-m", "immediate").catch(() => undefined);
      await run("pg_dropcluster", [VERSION, name]);
    },
  };
}
