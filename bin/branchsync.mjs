#!/usr/bin/env node
// Runs dist/main.mjs (`npm run build`, the bundle) when the sources are
// exactly those it was built from (bin/sources.mjs), and the TypeScript
// sources through tsx otherwise (or with BRANCHSYNC_FROM_SOURCE=1): same
// program, the bundle just starts faster, and an edit never runs stale code.
import path from "node:path";
import { builtStamp, sourceStamp } from "./sources.mjs";

const root = path.resolve(import.meta.dirname, "..");
const dist = path.join(root, "dist");

if (process.env.BRANCHSYNC_FROM_SOURCE !== "1" && builtStamp(dist) === sourceStamp(root)) {
  process.setSourceMapsEnabled(true);
  await import(path.join(dist, "main.mjs"));
} else {
  const { register } = await import("tsx/esm/api");
  register();
  await import("../cli/main.ts");
}
