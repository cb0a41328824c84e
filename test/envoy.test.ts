// envoy/envoy.yaml checked offline against Envoy's own v3 API protos (no Envoy binary here).
// The validator lives in envoy/validate.ts; this file asserts the branchsync-specific semantics
// (routing, stickiness, timeouts, circuit breakers, edge JWT) and that the validator can fail.

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parse as parseYaml } from "yaml";
import {
  loadEnvoyProtos,
  validateEnvoyConfig,
  validateEnvoyYaml,
  validateRulesSchemaIssues,
  clusterSpeaksHttp2,
  type ValidationResult,
} from "../envoy/validate.ts";

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const ENVOY_YAML = path.join(repo, "envoy", "envoy.yaml");

type Obj = Record<string, any>;

const SYNC_PREFIX = "/branchsync.v1.SyncService/";
const SYNC_PATH = "/branchsync.v1.SyncService/SyncStream";
const TENANT_HEADER = "x-branchsync-tenant";
const HEARTBEAT_SECONDS = 15;
const ENVOY_DEFAULT_MAX_REQUESTS = 1024;

const HCM = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const TLS = "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";
const JWT = "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication";
const GRPC_WEB = "envoy.extensions.filters.http.grpc_web.v3.GrpcWeb";
const ROUTER = "envoy.extensions.filters.http.router.v3.Router";

const typeOf = (any: Obj | undefined) => String(any?.["@type"] ?? "").replace(/^.*\//, "");
const seconds = (d: unknown) => {
  const m = /^(-?\d+(?:\.\d+)?)s$/.exec(String(d));
  assert.ok(m, `not a duration: ${JSON.stringify(d)}`);
  return Number(m[1]);
};

/** The HTTP connection manager of the :443 listener (works on raw YAML and canonical JSON). */
function hcmOf(cfg: Obj): Obj {
  const listener = cfg.static_resources.listeners.find((l: Obj) => l.address?.socket_address?.port_value === 443);
  assert.ok(listener, "no listener on :443");
  const filter = listener.filter_chains[0].filters.find((f: Obj) => typeOf(f.typed_config) === HCM);
  assert.ok(filter, "no http_connection_manager on :443");
  return filter.typed_config;
}
const clusterOf = (cfg: Obj, name: string): Obj => {
  const c = cfg.static_resources.clusters.find((x: Obj) => x.name === name);
  assert.ok(c, `no cluster ${name}`);
  return c;
};
/** Envoy's route selection for a request path (first match wins; prefix/path/safe_regex). */
function routeFor(hcm: Obj, reqPath: string): Obj | undefined {
  for (const vh of hcm.route_config.virtual_hosts) {
    for (const r of vh.routes) {
      const m = r.match;
      if (m.prefix !== undefined && reqPath.startsWith(m.prefix)) return r;
      if (m.path !== undefined && reqPath === m.path) return r;
      if (m.safe_regex && new RegExp(`^(?:${m.safe_regex.regex})$`).test(reqPath)) return r;
    }
  }
  return undefined;
}
const jwtFilterOf = (hcm: Obj) => hcm.http_filters.find((f: Obj) => typeOf(f.typed_config) === JWT)?.typed_config as Obj | undefined;
const jwtRulesFor = (jwt: Obj, reqPath: string) =>
  (jwt.rules as Obj[]).filter((r) => (r.match.prefix !== undefined ? reqPath.startsWith(r.match.prefix) : r.match.path === reqPath));

describe("envoy/envoy.yaml", function () {
  this.timeout(20_000);
  let result: ValidationResult;
  let cfg: Obj;
  let hcm: Obj;

  before(() => {
    result = validateEnvoyYaml(fs.readFileSync(ENVOY_YAML, "utf8"));
    assert.ok(result.config, `not even a bootstrap object:\n${result.issues.join("\n")}`);
    cfg = result.config;
    hcm = hcmOf(cfg);
  });

  it("is a valid Envoy v3 Bootstrap: every key and every typed_config checked against Envoy's protos", () => {
    assert.deepEqual(result.issues, [], `envoy.yaml is invalid:\n${result.issues.join("\n")}`);
    assert.ok(result.bootstrap, "not packed into envoy.config.bootstrap.v3.Bootstrap");
    // The Anys really hold the extension messages: unpack the HTTP connection manager.
    const { root } = loadEnvoyProtos();
    const bs = result.bootstrap as Obj;
    const any = bs.static_resources.listeners[0].filter_chains[0].filters[0].typed_config;
    assert.equal(any.type_url, `type.googleapis.com/${HCM}`);
    const unpacked = root.lookupType(HCM).decode(any.value) as Obj;
    assert.equal(unpacked.stat_prefix, "ingress_https");
    assert.equal(unpacked.http_filters.length, hcm.http_filters.length);
    for (const t of [HCM, TLS, JWT, GRPC_WEB, ROUTER]) assert.ok(result.facts.has(t), `${t} was not walked`);
  });

  it("needs the patched validate.proto, and the patch covers every rule the loaded protos use", () => {
    const text = fs.readFileSync(ENVOY_YAML, "utf8");
    const unpatched = loadEnvoyProtos({ patchValidate: false });
    validateEnvoyYaml(text, unpatched); // loads the same extension packages
    const stale = validateRulesSchemaIssues(unpatched);
    assert.ok(
      stale.some((i) => i.includes('"ignore_empty"')),
      `expected the bundled validate.proto to lack ignore_empty:\n${stale.slice(0, 5).join("\n")}`,
    );
    const patched = loadEnvoyProtos();
    assert.ok(patched.root.lookupType("validate.StringRules").fields.ignore_empty);
    assert.deepEqual(validateRulesSchemaIssues(patched), []);
  });

  it("serves the admin interface on 127.0.0.1:9901 only", () => {
    assert.deepEqual(cfg.admin?.address?.socket_address, { address: "127.0.0.1", port_value: 9901 });
  });

  it("terminates TLS on :443 with /etc/envoy/certs and ALPN h2,http/1.1", () => {
    const listener = cfg.static_resources.listeners.find((l: Obj) => l.address.socket_address.port_value === 443);
    assert.ok(listener);
    assert.equal(listener.filter_chains.length, 1);
    const ts = listener.filter_chains[0].transport_socket;
    assert.equal(typeOf(ts?.typed_config), TLS, "listener without TLS transport socket");
    const ctx = ts.typed_config.common_tls_context;
    assert.deepEqual(ctx.alpn_protocols, ["h2", "http/1.1"]);
    assert.deepEqual(ctx.tls_certificates, [
      { certificate_chain: { filename: "/etc/envoy/certs/server.crt" }, private_key: { filename: "/etc/envoy/certs/server.key" } },
    ]);
  });

  it("routes SyncService to hub_grpc and everything else but /metrics to hub_control", () => {
    assert.equal(routeFor(hcm, SYNC_PATH)?.route?.cluster, "hub_grpc");
    for (const p of ["/branchsync.v1.AuthService/Token", "/branchsync.v1.AdminService/ListTenants", "/healthz", "/.well-known/jwks.json", "/"]) {
      assert.equal(routeFor(hcm, p)?.route?.cluster, "hub_control", p);
    }
  });

  it("keeps /metrics (tenant ids in conflict labels) off the edge", () => {
    for (const p of ["/metrics", "/metrics?x=1"]) {
      const r = routeFor(hcm, p);
      assert.equal(r?.route, undefined, p);
      assert.equal(r?.direct_response?.status, 404, p);
    }
  });

  it("references only clusters that exist (routes, JWKS fetch)", () => {
    const names = new Set(cfg.static_resources.clusters.map((c: Obj) => c.name));
    assert.deepEqual([...names].sort(), ["hub_control", "hub_grpc", "hub_jwks"]);
    const refs = [
      ...(result.facts.get("envoy.config.route.v3.RouteAction") ?? []).map((f) => f.value.cluster),
      ...(result.facts.get("envoy.config.core.v3.HttpUri") ?? []).map((f) => f.value.cluster),
    ];
    assert.deepEqual(refs.sort(), ["hub_control", "hub_grpc", "hub_jwks"]);
    for (const r of refs) assert.ok(names.has(r), `dangling cluster reference ${r}`);
  });

  it("is sticky: hub_grpc is RING_HASH and the stream route hashes on the tenant header", () => {
    const c = clusterOf(cfg, "hub_grpc");
    assert.equal(c.lb_policy, "RING_HASH");
    const route = routeFor(hcm, SYNC_PATH)!.route;
    assert.ok(route.hash_policy?.length, "no hash_policy on the stream route");
    assert.deepEqual(route.hash_policy[0].header, { header_name: TENANT_HEADER }, "first hash policy must be the tenant header");
  });

  it("has stream-friendly timeouts", () => {
    const r = routeFor(hcm, SYNC_PATH)!;
    assert.equal(seconds(r.route.timeout), 0, "route timeout must be 0s (disabled) for SyncStream");
    assert.equal(r.route.max_stream_duration, undefined, "max_stream_duration must stay unset");
    assert.ok(r.route.idle_timeout === undefined || seconds(r.route.idle_timeout) > HEARTBEAT_SECONDS);
    const retry = r.route.retry_policy ?? {};
    assert.equal(retry.per_try_timeout, undefined, "per_try_timeout would cap every stream's lifetime");
    assert.ok(retry.per_try_idle_timeout === undefined || seconds(retry.per_try_idle_timeout) > HEARTBEAT_SECONDS);
    assert.equal(hcm.common_http_protocol_options?.max_stream_duration, undefined);
    assert.ok(hcm.request_timeout === undefined || seconds(hcm.request_timeout) === 0, "request_timeout must be disabled");
    const idle = seconds(hcm.stream_idle_timeout);
    assert.ok(idle > 2 * HEARTBEAT_SECONDS, `stream_idle_timeout ${idle}s must comfortably exceed the ${HEARTBEAT_SECONDS}s heartbeat`);
    assert.ok(idle <= 3600, "stream_idle_timeout should still reap dead streams");
    const grpc = clusterOf(cfg, "hub_grpc");
    const upstream = grpc.typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
    assert.equal(upstream.common_http_protocol_options?.max_stream_duration, undefined);
  });

  it("speaks HTTP/2 to hub_grpc and health-checks it with grpc.health.v1", () => {
    const c = clusterOf(cfg, "hub_grpc");
    const opts = c.typed_extension_protocol_options?.["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
    assert.ok(opts?.explicit_http_config?.http2_protocol_options, "hub_grpc needs explicit http2_protocol_options");
    assert.ok(clusterSpeaksHttp2(c));
    assert.ok(c.health_checks?.length >= 1, "no active health check on hub_grpc");
    for (const hc of c.health_checks) {
      assert.ok(hc.grpc_health_check, "hub_grpc health check must be grpc_health_check");
      assert.ok(seconds(hc.timeout) < seconds(hc.interval));
    }
  });

  it("raises circuit breakers far above Envoy's 1024 default (one per open stream)", () => {
    const c = clusterOf(cfg, "hub_grpc");
    const thresholds: Obj[] = c.circuit_breakers?.thresholds ?? [];
    const byPriority = new Map(thresholds.map((t) => [t.priority ?? "DEFAULT", t]));
    for (const prio of ["DEFAULT", "HIGH"]) {
      const t = byPriority.get(prio);
      assert.ok(t, `no ${prio} circuit breaker threshold on hub_grpc`);
      for (const k of ["max_requests", "max_connections", "max_pending_requests"]) {
        assert.ok(Number(t[k]) > ENVOY_DEFAULT_MAX_REQUESTS, `${prio}.${k} = ${t[k]} must exceed ${ENVOY_DEFAULT_MAX_REQUESTS}`);
      }
      assert.ok(Number(t.max_requests) >= 100_000);
    }
  });

  it("verifies agent JWTs at the edge for the SyncService prefix only, forwarding the token", () => {
    const jwt = jwtFilterOf(hcm);
    assert.ok(jwt, "no jwt_authn filter");
    const providers = Object.entries(jwt.providers as Obj);
    assert.equal(providers.length, 1);
    const [name, p] = providers[0]!;
    assert.equal(p.issuer, "branchsync-hub");
    assert.deepEqual(p.audiences, ["branchsync"]);
    assert.equal(p.forward, true, "the hub needs the token: forward: true");
    assert.equal(p.remote_jwks?.http_uri?.uri, "http://hub:8080/.well-known/jwks.json");
    assert.equal(p.remote_jwks?.http_uri?.cluster, "hub_jwks");
    const fromHeaders: Obj[] = p.from_headers ?? [{ name: "Authorization", value_prefix: "Bearer " }];
    assert.ok(fromHeaders.some((h) => h.name.toLowerCase() === "authorization" && h.value_prefix === "Bearer "));

    const sync = jwtRulesFor(jwt, SYNC_PATH);
    assert.equal(sync.length, 1);
    assert.equal(sync[0]!.match.prefix, SYNC_PREFIX);
    assert.deepEqual(sync[0]!.requires, { provider_name: name });
    for (const open of ["/branchsync.v1.AuthService/Token", "/healthz", "/.well-known/jwks.json"]) {
      assert.deepEqual(jwtRulesFor(jwt, open), [], `${open} must not require an agent JWT`);
    }
  });

  it("orders http filters jwt_authn, grpc_web, router (router last)", () => {
    assert.deepEqual(
      hcm.http_filters.map((f: Obj) => typeOf(f.typed_config)),
      [JWT, GRPC_WEB, ROUTER],
    );
  });

  it("finds the hubs by DNS name `hub` (STRICT_DNS) on 50051 and 8080", () => {
    const ports: Record<string, number> = { hub_grpc: 50051, hub_control: 8080, hub_jwks: 8080 };
    for (const [name, port] of Object.entries(ports)) {
      const c = clusterOf(cfg, name);
      assert.equal(c.type, "STRICT_DNS", name);
      const eps = c.load_assignment.endpoints.flatMap((e: Obj) => e.lb_endpoints.map((l: Obj) => l.endpoint.address.socket_address));
      assert.deepEqual(eps, [{ address: "hub", port_value: port }], name);
    }
  });
});

describe("envoy config validator rejects broken configs", function () {
  this.timeout(20_000);
  let raw: Obj;
  const clone = () => structuredClone(raw);
  const expectIssue = (cfg: Obj, re: RegExp) => {
    const r = validateEnvoyConfig(cfg);
    assert.ok(r.issues.some((i) => re.test(i)), `expected an issue matching ${re}, got:\n${r.issues.join("\n") || "(none)"}`);
    assert.equal(r.bootstrap, undefined, "an invalid config must not yield a Bootstrap");
  };
  const rename = (o: Obj, from: string, to: string) => {
    assert.ok(from in o, `fixture lost ${from}`);
    o[to] = o[from];
    delete o[from];
  };

  before(() => {
    raw = parseYaml(fs.readFileSync(ENVOY_YAML, "utf8"));
    assert.deepEqual(validateEnvoyConfig(raw).issues, []);
  });

  it("a misspelled field at top level", () => {
    const c = clone();
    rename(c, "static_resources", "static_resource");
    expectIssue(c, /unknown field "static_resource" in envoy\.config\.bootstrap\.v3\.Bootstrap \(did you mean "static_resources"\?\)/);
  });

  it("a misspelled field inside a typed_config Any (HttpConnectionManager)", () => {
    const c = clone();
    rename(hcmOf(c), "stream_idle_timeout", "stream_idle_timout");
    expectIssue(c, /unknown field "stream_idle_timout" in .*HttpConnectionManager/);
  });

  it("a misspelled field two Anys deep (jwt_authn provider)", () => {
    const c = clone();
    const jwt = jwtFilterOf(hcmOf(c))!;
    rename(jwt.providers.branchsync_hub, "forward", "forwad");
    expectIssue(c, /unknown field "forwad" in envoy\.extensions\.filters\.http\.jwt_authn\.v3\.JwtProvider/);
  });

  it("a misspelled field in the cluster's typed_extension_protocol_options", () => {
    const c = clone();
    const opts = clusterOf(c, "hub_grpc").typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
    rename(opts.explicit_http_config, "http2_protocol_options", "http2_protocol_option");
    expectIssue(c, /unknown field "http2_protocol_option"/);
  });

  it("a route to a cluster that does not exist", () => {
    const c = clone();
    routeFor(hcmOf(c), SYNC_PATH)!.route.cluster = "hub_grcp";
    expectIssue(c, /route references unknown cluster "hub_grcp"/);
  });

  it("a JWKS fetch from a cluster that does not exist", () => {
    const c = clone();
    jwtFilterOf(hcmOf(c))!.providers.branchsync_hub.remote_jwks.http_uri.cluster = "jwks";
    expectIssue(c, /unknown cluster "jwks"/);
  });

  it("an unknown typed_config @type", () => {
    const c = clone();
    hcmOf(c).http_filters[1].typed_config["@type"] = "type.googleapis.com/envoy.extensions.filters.http.grpc_web.v3.GrpcWebFilter";
    expectIssue(c, /unknown @type .*GrpcWebFilter/);
  });

  it("wrong value shapes: bad duration, bad enum, string for a list", () => {
    let c = clone();
    routeFor(hcmOf(c), SYNC_PATH)!.route.timeout = 0;
    expectIssue(c, /timeout: expected a duration/);
    c = clone();
    clusterOf(c, "hub_grpc").lb_policy = "RINGHASH";
    expectIssue(c, /unknown value "RINGHASH" for enum/);
    c = clone();
    c.static_resources.listeners[0].filter_chains[0].transport_socket.typed_config.common_tls_context.alpn_protocols = "h2,http/1.1";
    expectIssue(c, /alpn_protocols: expected a list/);
  });

  it("protoc-gen-validate rules: required fields, empty names, ranges, oneofs", () => {
    let c = clone();
    delete clusterOf(c, "hub_grpc").health_checks[0].unhealthy_threshold;
    expectIssue(c, /health_checks\[0\]\.unhealthy_threshold: is required/);
    c = clone();
    clusterOf(c, "hub_jwks").name = "";
    expectIssue(c, /clusters\[2:?\]\.name: must not be empty/);
    c = clone();
    c.admin.address.socket_address.port_value = 99010;
    expectIssue(c, /port_value: 99010 out of range/);
    c = clone();
    hcmOf(c).rds = { route_config_name: "x", config_source: { ads: {} } };
    expectIssue(c, /oneof .*route_specifier has more than one member set/);
  });

  it("integrity: router not last, gRPC health check on an HTTP/1 cluster, unknown jwt provider", () => {
    let c = clone();
    hcmOf(c).http_filters.reverse();
    expectIssue(c, /router filter must appear exactly once, as the last/);
    c = clone();
    delete clusterOf(c, "hub_grpc").typed_extension_protocol_options;
    expectIssue(c, /grpc_health_check needs an HTTP\/2 cluster/);
    c = clone();
    jwtFilterOf(hcmOf(c))!.rules[0].requires.provider_name = "hub";
    expectIssue(c, /unknown jwt provider "hub"/);
  });

  it("YAML problems (duplicate keys)", () => {
    const text = fs.readFileSync(ENVOY_YAML, "utf8").replace("stat_prefix: ingress_https", "stat_prefix: ingress_https\n                stat_prefix: again");
    const r = validateEnvoyYaml(text);
    assert.ok(r.issues.some((i) => /yaml: .*unique/i.test(i)), r.issues.join("\n"));
  });
});

describe("envoy/gen-dev-certs.sh", function () {
  this.timeout(20_000);
  it("makes a CA and a server cert for localhost that verifies", function () {
    if (spawnSync("openssl", ["version"]).error) this.skip();
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "envoy-certs-"));
    try {
      const gen = spawnSync("sh", [path.join(repo, "envoy", "gen-dev-certs.sh"), dir], { encoding: "utf8" });
      assert.equal(gen.status, 0, gen.stderr);
      for (const f of ["ca.crt", "server.crt", "server.key"]) assert.ok(fs.existsSync(path.join(dir, f)), f);
      const v = spawnSync("openssl", ["verify", "-CAfile", path.join(dir, "ca.crt"), path.join(dir, "server.crt")], { encoding: "utf8" });
      assert.equal(v.status, 0, v.stdout + v.stderr);
      const san = spawnSync("openssl", ["x509", "-in", path.join(dir, "server.crt"), "-noout", "-ext", "subjectAltName"], { encoding: "utf8" });
      assert.match(san.stdout, /DNS:localhost/);
      assert.match(san.stdout, /IP Address:127\.0\.0\.1/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
