import assert from "node:assert/strict";
import net from "node:net";
import pg from "pg";
import { pino } from "pino";
import { toPublicError, StatusError, Status } from "../hub/errors.ts";
import { PG_BASE } from "./support/db.ts";
import { freePort } from "./support/ports.ts";

/** What toPublicError logged, by level. */
function capture() {
  const lines: { level: number; msg: string }[] = [];
  const log = pino({ level: "debug" }, { write: (s: string) => { lines.push(JSON.parse(s)); } });
  return { log, levels: () => lines.map((l) => `${l.level}:${l.msg}`) };
}

/** A TCP relay to the test server, so a test can cut a connection mid-query. */
async function relay(): Promise<{ url: string; cut(): void; close(): Promise<void> }> {
  const target = new URL(PG_BASE);
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const upstream = net.connect(Number(target.port || 5432), target.hostname);
    sockets.add(client).add(upstream);
    client.pipe(upstream).pipe(client);
    client.on("error", () => upstream.destroy());
    upstream.on("error", () => client.destroy());
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const port = (server.address() as net.AddressInfo).port;
  return {
    url: `postgresql://${target.username}@127.0.0.1:${port}/postgres`,
    cut() { for (const s of sockets) s.destroy(); sockets.clear(); },
    close: () => new Promise((r) => { server.close(() => r()); }),
  };
}

async function failure(f: () => Promise<unknown>): Promise<unknown> {
  try { await f(); } catch (e) { return e; }
  throw new Error("expected a failure");
}

describe("hub errors: which failures clients should retry", function () {
  this.timeout(20_000);

  it("a connection to the hub's database cut mid-query is UNAVAILABLE (a resend is safe), logged as a warning", async () => {
    const r = await relay();
    const pool = new pg.Pool({ connectionString: r.url, max: 1 });
    pool.on("error", () => undefined);
    try {
      await pool.query("SELECT 1");
      const err = await failure(async () => {
        const q = pool.query("SELECT pg_sleep(5)");
        setTimeout(() => r.cut(), 200);
        await q;
      });
      const { log, levels } = capture();
      const pub = toPublicError(err, log);
      assert.equal(pub.code, Status.UNAVAILABLE, `${(err as Error).message} must be retryable`);
      assert.match(pub.message, /hub storage unavailable, retry later \(error id [0-9a-f-]{36}\)/);
      assert.deepEqual(levels(), ["40:storage unavailable"]);
    } finally {
      await pool.end().catch(() => undefined);
      await r.close();
    }
  });

  it("a server ending the connection (restart, crash recovery) or refusing it is UNAVAILABLE", async () => {
    const victim = new pg.Client({ connectionString: `${PG_BASE}/postgres` });
    victim.on("error", () => undefined);
    await victim.connect();
    const pid = (await victim.query("SELECT pg_backend_pid() AS p")).rows[0].p;
    const killer = new pg.Client({ connectionString: `${PG_BASE}/postgres` });
    await killer.connect();
    const ended = failure(() => victim.query("SELECT pg_sleep(5)"));
    await new Promise((r) => setTimeout(r, 200));
    await killer.query("SELECT pg_terminate_backend($1)", [pid]);
    await killer.end();
    const port = await freePort(5860);
    const refused = await failure(async () => {
      const c = new pg.Client({ connectionString: `postgresql://postgres@127.0.0.1:${port}/postgres` });
      await c.connect();
    });
    for (const err of [await ended, refused]) {
      assert.equal(toPublicError(err, capture().log).code, Status.UNAVAILABLE, String((err as Error).message));
    }
    await victim.end().catch(() => undefined);
  });

  it("anything else is INTERNAL with an id, logged as an error; a StatusError keeps its code and message", async () => {
    const c = new pg.Client({ connectionString: `${PG_BASE}/postgres` });
    await c.connect();
    try {
      const err = await failure(() => c.query("SELECT 1/0"));
      const { log, levels } = capture();
      const pub = toPublicError(err, log);
      assert.equal(pub.code, Status.INTERNAL);
      assert.match(pub.message, /^internal error \(error id [0-9a-f-]{36}\)$/);
      assert.deepEqual(levels(), ["50:internal error"]);
      // A message that merely mentions a cut connection, with a code, is not one.
      assert.equal(toPublicError(Object.assign(new Error("Connection terminated unexpectedly"), { code: "XX000" }), log).code, Status.INTERNAL);
    } finally {
      await c.end();
    }
    const mine = toPublicError(new StatusError(Status.FAILED_PRECONDITION, "table t is not registered"), capture().log);
    assert.deepEqual(mine, { code: Status.FAILED_PRECONDITION, message: "table t is not registered", retryAfterMs: undefined });
  });
});
