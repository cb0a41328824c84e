#!/usr/bin/env node
// Runs dist/main.mjs (`npm run build`, the bundle) when the sources are
// exactly those it was built from (dist/sources.json), and the TypeScript
// sources through tsx otherwise (or with BRANCHSYNC_FROM_SOURCE=1): same
// program, the bundle just starts faster, and an edit never runs stale code.
import fs from "node:fs";
import path from "node:path";
import { sameStamp, sourceStamp } from "./sources.mjs";

const root = path.resolve(import.meta.dirname, "..");
const dist = path.join(root, "dist");

function bundleIsFresh() {
  if (process.env.BRANCHSYNC_FROM_SOURCE === "1") return false;
  let built;
  try {
    if (!fs.existsSync(path.join(dist, "main.mjs"))) return false;
    built = JSON.parse(fs.readFileSync(path.join(dist, "sources.json"), "utf8"));
  } catch {
    return false;
  }
  return sameStamp(built, sourceStamp(root));
}

if (bundleIsFresh()) {
  process.setSourceMapsEnabled(true);
  await import(path.join(dist, "main.mjs"));
} else {
  const { register } = await import("tsx/esm/api");
  register();
  await import("../cli/main.ts");
}
