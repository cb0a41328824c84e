#!/usr/bin/env node
// `npm run build`: bundles the CLI (hub, agent, admin) into dist/main.mjs and its chunks
// with esbuild (tsx's own transformer), npm packages left as imports. A
// process then starts without a loader thread transpiling every file: the
// agent that restarts to catch up a backlog is applying in a fraction of
// the time. bin/branchsync.mjs runs the bundle only while the sources are
// the ones recorded in dist/sources.json, so an edit never runs stale code.
import fs from "node:fs";
import path from "node:path";
import { build } from "esbuild";
import { sourceStamp } from "../bin/sources.mjs";

const root = path.resolve(import.meta.dirname, "..");
// Chunk names carry content hashes: clear out the previous build's.
fs.rmSync(path.join(root, "dist"), { recursive: true, force: true });
// Taken before bundling: a file edited meanwhile no longer matches it.
const stamp = sourceStamp(root);
await build({
  entryPoints: [path.join(root, "cli/main.ts")],
  outdir: path.join(root, "dist"),
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
fs.writeFileSync(path.join(root, "dist", "sources.json"), JSON.stringify(stamp));
