#!/usr/bin/env node
// `npm test`: installs dependencies if they are missing, checks that the
// PostgreSQL and Redis the integration tests need are reachable (saying how
// to start them if not), then runs every mocha suite.
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import path from "node:path";

const root = path.resolve(import.meta.dirname, "..");
process.chdir(root);

function sh(cmd, args) {
  const r = spawnSync(cmd, args, { stdio: "inherit" });
  if (r.status !== 0) process.exit(r.status ?? 1);
}

if (!fs.existsSync("node_modules/.bin/mocha")) {
  console.log("npm test: installing dependencies (npm ci)");
  sh("npm", ["ci", "--no-audit", "--no-fund"]);
}

function reachable(port) {
  return new Promise((resolve) => {
    const s = net.connect({ host: "127.0.0.1", port });
    s.setTimeout(2000);
    s.on("connect", () => { s.destroy(); resolve(true); });
    s.on("error", () => resolve(false));
    s.on("timeout", () => { s.destroy(); resolve(false); });
  });
}

const missing = [];
if (!(await reachable(5432))) missing.push("PostgreSQL on 127.0.0.1:5432 (e.g. pg_ctlcluster 15 main start)");
if (!(await reachable(6379))) missing.push("Redis on 127.0.0.1:6379 (e.g. redis-server --daemonize yes)");
if (missing.length) {
  console.error(`npm test: the integration tests need ${missing.join(" and ")}`);
  process.exit(1);
}

// The processes the tests start run the bundle, as `npm start` does (bin/branchsync.mjs).
sh("node", ["scripts/build.mjs"]);

const files = fs.readdirSync("test").filter((f) => f.endsWith(".test.ts")).map((f) => path.join("test", f)).sort();
sh(path.join("node_modules", ".bin", "mocha"), [...files, ...process.argv.slice(2)]);
