import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
// @ts-expect-error: plain JavaScript beside the launcher, no types
import { sourceStamp } from "../bin/sources.mjs";

const REPO = path.resolve(import.meta.dirname, "..");

/**
 * bin/branchsync.mjs in a scratch tree whose "bundle" and "sources" just say
 * which ran: the launcher must never run a bundle built from other sources.
 */
describe("bin/branchsync.mjs runs the bundle only for the sources it was built from", function () {
  this.timeout(30_000);
  let root: string;
  const at = (rel: string) => path.join(root, rel);
  const write = (rel: string, text: string, mtimeS: number) => {
    fs.mkdirSync(path.dirname(at(rel)), { recursive: true });
    fs.writeFileSync(at(rel), text);
    fs.utimesSync(at(rel), mtimeS, mtimeS);
  };
  const run = (env: Record<string, string> = {}) => {
    const r = spawnSync(process.execPath, [at("bin/branchsync.mjs")], { encoding: "utf8", env: { ...process.env, ...env } });
    assert.equal(r.status, 0, r.stderr);
    return r.stdout.trim();
  };
  const old = Date.now() / 1000 - 3600;

  beforeEach(() => {
    root = fs.mkdtempSync(path.join(os.tmpdir(), "bsbin-"));
    fs.cpSync(path.join(REPO, "bin"), at("bin"), { recursive: true });
    fs.symlinkSync(path.join(REPO, "node_modules"), at("node_modules"));
    fs.writeFileSync(at("package.json"), `{"type": "module"}`);
    write("cli/main.ts", `const from: string = "source"; console.log(from);`, old);
    for (const d of ["hub", "agent", "lib", "gen/x"]) write(`${d}/a.ts`, "export {};", old);
    write("dist/main.mjs", `console.log("bundle");`, old + 60);
    fs.writeFileSync(at("dist/sources.json"), JSON.stringify({ sha256: sourceStamp(root) }));
  });
  afterEach(() => fs.rmSync(root, { recursive: true, force: true }));

  it("runs the bundle when the sources are the ones it was built from", () => {
    assert.equal(run(), "bundle");
  });

  it("runs the sources when a .ts file anywhere below changed", () => {
    write("gen/x/a.ts", "export const changed = 1;", Date.now() / 1000);
    assert.equal(run(), "source");
  });

  it("goes by content, not file times: an edit keeping size and time runs the sources, a touch does not", () => {
    write("lib/a.ts", "export {}/", old);
    assert.equal(run(), "source");
    write("lib/a.ts", "export {};", Date.now() / 1000);
    assert.equal(run(), "bundle");
  });

  it("runs the sources when a file that steers the build changed", () => {
    write("tsconfig.json", "{}", old);
    assert.equal(run(), "source");
  });

  it("runs the sources when a file was added or removed", () => {
    write("hub/new.ts", "export {};", old);
    assert.equal(run(), "source");
    fs.rmSync(at("hub/new.ts"));
    assert.equal(run(), "bundle");
    fs.rmSync(at("lib/a.ts"));
    assert.equal(run(), "source");
  });

  it("runs the sources without a bundle, or when asked to", () => {
    assert.equal(run({ BRANCHSYNC_FROM_SOURCE: "1" }), "source");
    fs.rmSync(at("dist/sources.json"));
    assert.equal(run(), "source");
    fs.writeFileSync(at("dist/sources.json"), JSON.stringify({ sha256: sourceStamp(root) }));
    fs.rmSync(at("dist/main.mjs"));
    assert.equal(run(), "source");
  });
});
