#!/usr/bin/env node
// `npm run build` (`--force` to rebuild anyway): bundles the CLI (hub,
// agent, admin) into dist/main.mjs and its chunks with esbuild, npm packages
// left as imports. A process then starts without a loader thread
// transpiling every file: the agent that restarts to catch up a backlog is
// applying in a fraction of the time. bin/branchsync.mjs runs the bundle
// only while the sources are the ones recorded in dist/sources.json.
//
// Nothing to do when dist/ is already built from these sources (so
// `npm start` needs no write access then). Otherwise the new bundle is
// built beside dist/ and swapped in by renames: a process starting
// meanwhile finds the old bundle or the new one, never half of one.
import fs from "node:fs";
import path from "node:path";
import { build } from "esbuild";
import { builtStamp, sourceStamp } from "../bin/sources.mjs";

const root = path.resolve(import.meta.dirname, "..");
const dist = path.join(root, "dist");
// Taken before bundling: a file edited meanwhile no longer matches it.
const stamp = sourceStamp(root);
if (!process.argv.includes("--force") && builtStamp(dist) === stamp) process.exit(0);

const next = `${dist}.build-${process.pid}`;
const old = `${dist}.old-${process.pid}`;
fs.rmSync(next, { recursive: true, force: true });
await build({
  entryPoints: [path.join(root, "cli/main.ts")],
  outdir: next,
  outExtension: { ".js": ".mjs" },
  // The CLI imports the hub, the agent and the admin client lazily; split,
  // each loads only its own packages (the agent none of the hub's Redis,
  // Connect, health or metrics, about 0.2 s).
  splitting: true,
  bundle: true,
  packages: "external",
  platform: "node",
  format: "esm",
  target: "node20",
  sourcemap: true,
  logLevel: "warning",
});
fs.writeFileSync(path.join(next, "sources.json"), JSON.stringify({ sha256: stamp }));
if (fs.existsSync(dist)) fs.renameSync(dist, old);
fs.renameSync(next, dist);
fs.rmSync(old, { recursive: true, force: true });
