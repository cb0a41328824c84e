// docker-compose.yml and Dockerfile, checked without a Docker engine: `docker-compose config`
// (Debian package docker-compose) validates and normalizes the file; the rest are structure
// checks and cross-checks against envoy/envoy.yaml.
//
// This test installs nothing. Without the binary it fails and says what to install.

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parse as parseYaml } from "yaml";

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const COMPOSE_FILE = path.join(repo, "docker-compose.yml");

type Obj = Record<string, any>;

function compose(args: string[]) {
  const r = spawnSync("docker-compose", ["-f", COMPOSE_FILE, ...args], {
    cwd: repo,
    encoding: "utf8",
    timeout: 60_000,
    env: { ...process.env, ADMIN_TOKEN: undefined, POSTGRES_PASSWORD: undefined },
  });
  if ((r.error as NodeJS.ErrnoException | undefined)?.code === "ENOENT") {
    assert.fail(
      "docker-compose is not installed: run `apt-get install -y docker-compose` (Debian package), then rerun. " +
        "This test does not install anything itself.",
    );
  }
  if (r.error) throw r.error;
  return r;
}

/** Bind mounts as {source, target, readOnly}, from the short ("a:b:ro") or long syntax. */
function binds(svc: Obj): { source: string; target: string; readOnly: boolean }[] {
  return (svc.volumes ?? []).map((v: string | Obj) => {
    if (typeof v === "string") {
      const [source, target, mode] = v.split(":");
      return { source: source!, target: target!, readOnly: mode === "ro" };
    }
    return { source: v.source, target: v.target, readOnly: Boolean(v.read_only) };
  });
}

const hubServices = (services: Obj) =>
  Object.entries(services)
    .filter(([, s]) => (s.command ?? []).join(" ").includes("bin/branchsync.mjs hub"))
    .map(([name]) => name);

describe("docker-compose.yml", function () {
  this.timeout(60_000);
  let services: Obj;
  let envoyCfg: Obj;

  before(() => {
    const r = compose(["config"]);
    assert.equal(r.status, 0, `docker-compose config failed:\n${r.stderr}`);
    services = parseYaml(r.stdout).services;
    envoyCfg = parseYaml(fs.readFileSync(path.join(repo, "envoy", "envoy.yaml"), "utf8"));
  });

  it("passes `docker-compose config -q`", () => {
    const r = compose(["config", "-q"]);
    assert.equal(r.status, 0, `docker-compose config -q failed:\n${r.stderr}`);
    assert.equal(r.stdout, "");
  });

  it("runs postgres:15, redis:7, two hub replicas from ./Dockerfile, and envoy v1.31", () => {
    assert.equal(services.postgres?.image, "postgres:15");
    assert.equal(services.redis?.image, "redis:7");
    assert.equal(services.envoy?.image, "envoyproxy/envoy:v1.31-latest");
    const hubs = hubServices(services);
    assert.equal(hubs.length, 2, `expected two hub replicas, got ${hubs.join(", ")}`);
    for (const h of hubs) {
      const s = services[h];
      assert.deepEqual(s.command, ["node", "bin/branchsync.mjs", "hub"]);
      assert.equal(path.resolve(repo, s.build.context), repo, `${h} build context`);
      assert.equal(s.build.dockerfile ?? "Dockerfile", "Dockerfile");
    }
  });

  it("gives hubs DATABASE_URL, REDIS_URL and ADMIN_TOKEN pointing at the compose services", () => {
    for (const h of hubServices(services)) {
      const env = services[h].environment as Obj;
      const db = new URL(env.DATABASE_URL);
      assert.equal(db.protocol, "postgres:");
      assert.equal(db.hostname, "postgres");
      assert.equal(db.pathname, `/${services.postgres.environment.POSTGRES_DB}`);
      assert.equal(db.username, services.postgres.environment.POSTGRES_USER);
      assert.equal(decodeURIComponent(db.password), services.postgres.environment.POSTGRES_PASSWORD);
      const redis = new URL(env.REDIS_URL);
      assert.equal(redis.protocol, "redis:");
      assert.equal(redis.hostname, "redis");
      assert.ok(typeof env.ADMIN_TOKEN === "string" && env.ADMIN_TOKEN.length >= 16, "ADMIN_TOKEN missing or short");
    }
  });

  it("has a healthcheck on every service and starts dependents only when dependencies are healthy", () => {
    for (const [name, s] of Object.entries(services)) {
      const test = s.healthcheck?.test;
      assert.ok(Array.isArray(test) && test.length > 1 && test[0] !== "NONE", `${name} has no healthcheck`);
    }
    for (const h of hubServices(services)) {
      assert.deepEqual(services[h].depends_on, {
        postgres: { condition: "service_healthy" },
        redis: { condition: "service_healthy" },
      });
    }
    const envoyDeps = services.envoy.depends_on as Obj;
    assert.deepEqual(Object.keys(envoyDeps).sort(), hubServices(services).sort());
    for (const d of Object.values(envoyDeps)) assert.equal(d.condition, "service_healthy");
  });

  it("makes every hostname Envoy resolves an alias of all hub replicas and nothing else", () => {
    const hosts = new Set<string>();
    for (const c of envoyCfg.static_resources.clusters) {
      for (const e of c.load_assignment.endpoints) for (const l of e.lb_endpoints) hosts.add(l.endpoint.address.socket_address.address);
    }
    assert.deepEqual([...hosts], ["hub"]);
    const aliasesOf = (s: Obj) => Object.values((s.networks ?? {}) as Obj).flatMap((n: Obj | null) => n?.aliases ?? []);
    for (const [name, s] of Object.entries(services)) {
      const isHub = hubServices(services).includes(name);
      for (const host of hosts) {
        assert.equal(aliasesOf(s).includes(host) || name === host, isHub, `${name} ${isHub ? "lacks" : "must not have"} alias ${host}`);
      }
    }
  });

  it("mounts envoy.yaml and the certs where the Envoy config expects them, and publishes :443", () => {
    const envoy = services.envoy;
    const mounts = binds(envoy);
    const cmd: string[] = envoy.command;
    const configPath = cmd[cmd.indexOf("-c") + 1];
    const cfgMount = mounts.find((m) => m.target === configPath);
    assert.ok(cfgMount, `nothing mounted at ${configPath}`);
    assert.equal(path.resolve(repo, cfgMount.source), path.join(repo, "envoy", "envoy.yaml"));
    assert.ok(cfgMount.readOnly);

    const listener = envoyCfg.static_resources.listeners.find((l: Obj) => l.address.socket_address.port_value === 443);
    const tls = listener.filter_chains[0].transport_socket.typed_config.common_tls_context.tls_certificates[0];
    for (const file of [tls.certificate_chain.filename, tls.private_key.filename]) {
      const m = mounts.find((x) => file.startsWith(`${x.target}/`));
      assert.ok(m, `${file} is not inside any mount`);
      assert.equal(path.resolve(repo, m.source), path.join(repo, "envoy", "certs"));
    }
    assert.ok(fs.existsSync(path.join(repo, "envoy", "certs")), "envoy/certs/ must exist (bind mount source)");

    const published = (envoy.ports ?? []).map((p: string | Obj) => (typeof p === "string" ? p : `${p.published}:${p.target}`));
    assert.ok(published.some((p: string) => p.endsWith(":443")), `envoy does not publish 443: ${published}`);
  });
});

describe("Dockerfile", () => {
  const lines = fs
    .readFileSync(path.join(repo, "Dockerfile"), "utf8")
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith("#"));
  const instr = (name: string) => lines.filter((l) => l.toUpperCase().startsWith(`${name} `)).map((l) => l.slice(name.length + 1).trim());

  it("builds on node:20-slim with npm ci and runs the hub as a non-root user", () => {
    assert.deepEqual(instr("FROM"), ["node:20-slim"]);
    assert.ok(instr("RUN").some((r) => /\bnpm ci\b/.test(r)), "no `npm ci`");
    assert.equal(JSON.parse(instr("CMD").at(-1)!).join(" "), "node bin/branchsync.mjs hub");
    assert.ok(instr("USER").length > 0 && instr("USER").at(-1) !== "root");
  });

  it("copies the lockfile before npm ci and only sources that exist", () => {
    const copyIdx = lines.findIndex((l) => /^COPY .*package-lock\.json/.test(l));
    const ciIdx = lines.findIndex((l) => /^RUN .*npm ci/.test(l));
    assert.ok(copyIdx >= 0 && copyIdx < ciIdx, "package-lock.json must be copied before npm ci");
    // The bundle is built from the sources, so after they are copied: a
    // build before them would fail, one left out would run through tsx.
    const buildIdx = lines.findIndex((l) => /^RUN node scripts\/build\.mjs/.test(l));
    const lastCopy = lines.reduce((last, l, i) => (/^COPY /.test(l) ? i : last), -1);
    assert.ok(buildIdx > lastCopy, "RUN node scripts/build.mjs must come after every COPY");
    for (const c of instr("COPY")) {
      const parts = c.split(/\s+/).filter((p) => !p.startsWith("--"));
      for (const src of parts.slice(0, -1)) {
        assert.ok(fs.existsSync(path.join(repo, src)), `COPY source ${src} does not exist`);
        assert.ok(!/node_modules|certs/.test(src), `must not copy ${src}`);
      }
    }
  });
});
