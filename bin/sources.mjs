// What the bundle is built from: every .ts file under the source folders,
// and the files that steer the build, hashed by content. bin/branchsync.mjs
// runs the bundle only when this hash is the one recorded at build time;
// file times would miss an edit that keeps size and time (tarballs with
// fixed times, rsync -t), and are changed by a clone that changes nothing.
import { createHash } from "node:crypto";
import fs from "node:fs";
import path from "node:path";

export const SOURCE_DIRS = ["cli", "hub", "agent", "lib", "gen"];
const BUILD_FILES = ["package.json", "tsconfig.json", "scripts/build.mjs"];

/** sha256 over the sorted paths and contents of the tree at `root`. */
export function sourceStamp(root) {
  const files = BUILD_FILES.filter((f) => fs.existsSync(path.join(root, f)));
  const walk = (rel) => {
    for (const e of fs.readdirSync(path.join(root, rel), { withFileTypes: true })) {
      const p = `${rel}/${e.name}`;
      if (e.isDirectory()) walk(p);
      else if (e.name.endsWith(".ts")) files.push(p);
    }
  };
  for (const d of SOURCE_DIRS) if (fs.existsSync(path.join(root, d))) walk(d);
  const h = createHash("sha256");
  for (const f of files.sort()) h.update(`${f}\0`).update(fs.readFileSync(path.join(root, f))).update("\0");
  return h.digest("hex");
}

/** The stamp dist/ was built from, or null. */
export function builtStamp(dist) {
  try {
    if (!fs.existsSync(path.join(dist, "main.mjs"))) return null;
    return JSON.parse(fs.readFileSync(path.join(dist, "sources.json"), "utf8")).sha256 ?? null;
  } catch {
    return null;
  }
}
