#!/usr/bin/env node
// Runs dist/main.mjs (`npm run build`, the bundle) when it is newer
// than every source file, and the TypeScript sources through tsx otherwise
// (or with BRANCHSYNC_FROM_SOURCE=1): same program, the bundle just starts
// faster. Stale means a .ts file, or a folder (a file added or removed),
// changed after the bundle was written.
import fs from "node:fs";
import path from "node:path";

const root = path.resolve(import.meta.dirname, "..");
const bundle = path.join(root, "dist", "main.mjs");
const SOURCES = ["cli", "hub", "agent", "lib", "gen"];

function newerThan(dir, t) {
  const st = fs.statSync(dir);
  if (st.mtimeMs > t) return true;
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory() ? newerThan(p, t) : e.name.endsWith(".ts") && fs.statSync(p).mtimeMs > t) return true;
  }
  return false;
}

function bundleIsFresh() {
  if (process.env.BRANCHSYNC_FROM_SOURCE === "1") return false;
  let t;
  try { t = fs.statSync(bundle).mtimeMs; } catch { return false; }
  return !SOURCES.some((d) => newerThan(path.join(root, d), t));
}

if (bundleIsFresh()) {
  process.setSourceMapsEnabled(true);
  await import(bundle);
} else {
  const { register } = await import("tsx/esm/api");
  register();
  await import("../cli/main.ts");
}
