// What the bundle was built from: every .ts file under the source folders
// with its size and modification time. bin/branchsync.mjs runs the bundle
// only when this is exactly what it was built from; "newer than the bundle"
// would miss a file put back with an older time (a checkout, rsync -t).
import fs from "node:fs";
import path from "node:path";

export const SOURCE_DIRS = ["cli", "hub", "agent", "lib", "gen"];

/** {"hub/main.ts": "1234:1732345678901.123", ...} for the tree at `root`. */
export function sourceStamp(root) {
  const out = {};
  const walk = (rel) => {
    for (const e of fs.readdirSync(path.join(root, rel), { withFileTypes: true })) {
      const p = `${rel}/${e.name}`;
      if (e.isDirectory()) walk(p);
      else if (e.name.endsWith(".ts")) {
        const st = fs.statSync(path.join(root, p));
        out[p] = `${st.size}:${st.mtimeMs}`;
      }
    }
  };
  for (const d of SOURCE_DIRS) if (fs.existsSync(path.join(root, d))) walk(d);
  return out;
}

export function sameStamp(a, b) {
  const ka = Object.keys(a);
  return ka.length === Object.keys(b).length && ka.every((k) => a[k] === b[k]);
}
