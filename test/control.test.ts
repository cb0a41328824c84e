import assert from "node:assert/strict";
import http2 from "node:http2";
import { decodeProtectedHeader, createLocalJWKSet, jwtVerify } from "jose";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { AuthService } from "../gen/branchsync/v1/auth_pb.ts";
import { startCluster, ITEMS_DDL, type Cluster } from "./support/cluster.ts";
import { waitFor } from "./support/db.ts";

describe("control plane endpoints", function () {
  this.timeout(60_000);
  let c: Cluster;
  let base: string;
  before(async () => {
    c = await startCluster();
    base = `http://127.0.0.1:${c.hub.httpPort}`;
  });
  after(async () => { await c?.close(); });

  it("serves /healthz", async () => {
    const r = await fetch(`${base}/healthz`);
    assert.equal(r.status, 200);
    assert.equal((await r.text()).trim(), "serving");
  });

  it("publishes the JWKS that verifies issued tokens (for Envoy's jwt_authn)", async () => {
    await c.addTenant("jw");
    const b = await c.addBranch("jw", "s1", ITEMS_DDL, ["items"]);
    // IssueToken over plain gRPC (HTTP/2 on the same port as curl's HTTP/1.1).
    const auth = createClient(AuthService, createGrpcTransport({ baseUrl: base }));
    const { token } = await auth.issueToken({ apiKey: b.apiKey });
    const jwks = await (await fetch(`${base}/.well-known/jwks.json`)).json();
    assert.ok(jwks.keys.some((k: { kid: string }) => k.kid === decodeProtectedHeader(token).kid));
    assert.ok(jwks.keys.every((k: { d?: string }) => k.d === undefined), "no private key material in the JWKS");
    const { payload } = await jwtVerify(token, createLocalJWKSet(jwks), { issuer: "branchsync-hub", audience: "branchsync" });
    assert.deepEqual([payload.tenant, payload.sub], ["jw", "s1"]);
  });

  it("exposes metrics without tenant or branch names", async () => {
    await c.addTenant("secretcorp");
    const b = await c.addBranch("secretcorp", "hidden-branch", ITEMS_DDL, ["items"]);
    await b.start();
    await waitFor("session open", async () => c.hub.sessionCount() > 0);
    await b.db.pool.query("INSERT INTO items VALUES (1, 'x', 1, 1, NULL, now())");
    await waitFor("change ingested", async () => (await b.agent!.pendingLocal()) === 0);
    const text = await (await fetch(`${base}/metrics`)).text();
    assert.match(text, /^branchsync_sessions 1$/m);
    assert.match(text, /^branchsync_changes_ingested_total [1-9]/m);
    assert.doesNotMatch(text, /secretcorp|hidden-branch/);
  });

  it("speaks HTTP/2 cleartext on the control port too", async () => {
    const s = http2.connect(base);
    const status = await new Promise<number>((resolve, reject) => {
      const req = s.request({ ":path": "/healthz" });
      req.on("response", (h) => resolve(Number(h[":status"])));
      req.on("error", reject);
      req.end();
    });
    s.close();
    assert.equal(status, 200);
  });
});
