import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

const REPO = path.resolve(import.meta.dirname, "..");

/**
 * bin/branchsync.mjs in a scratch tree whose "bundle" and "sources" just say
 * which ran: the launcher must never run a bundle older than any source.
 */
describe("bin/branchsync.mjs picks the bundle only while it is fresh", function () {
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

  beforeEach(() => {
    root = fs.mkdtempSync(path.join(os.tmpdir(), "bsbin-"));
    fs.cpSync(path.join(REPO, "bin"), at("bin"), { recursive: true });
    fs.symlinkSync(path.join(REPO, "node_modules"), at("node_modules"));
    fs.writeFileSync(at("package.json"), `{"type": "module"}`);
    const old = Date.now() / 1000 - 3600;
    write("cli/main.ts", `const from: string = "source"; console.log(from);`, old);
    for (const d of ["hub", "agent", "lib", "gen/x"]) write(`${d}/a.ts`, "export {};", old);
    for (const d of ["cli", "hub", "agent", "lib", "gen/x", "gen"]) fs.utimesSync(at(d), old, old);
    write("dist/main.mjs", `console.log("bundle");`, old + 60);
  });
  afterEach(() => fs.rmSync(root, { recursive: true, force: true }));

  it("runs the bundle when it is newer than every source", () => {
    assert.equal(run(), "bundle");
  });

  it("runs the sources when a .ts file anywhere below changed after the bundle", () => {
    write("gen/x/a.ts", "export const changed = 1;", Date.now() / 1000);
    assert.equal(run(), "source");
  });

  it("runs the sources when a file was added or removed (the folder changed)", () => {
    fs.rmSync(at("lib/a.ts"));
    assert.equal(run(), "source");
  });

  it("runs the sources without a bundle, or when asked to", () => {
    assert.equal(run({ BRANCHSYNC_FROM_SOURCE: "1" }), "source");
    fs.rmSync(at("dist"), { recursive: true });
    assert.equal(run(), "source");
  });
});
