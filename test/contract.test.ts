import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

const ROOT = path.resolve(import.meta.dirname, "..");
const BUF = path.join(ROOT, "node_modules/.bin/buf");
// The contract as released; replace it (`buf build -o`) only when releasing.
const RELEASED = "proto-released/branchsync-v1-0.1.0.binpb";

function listFiles(dir: string): string[] {
  return fs.readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile())
    .map((e) => path.relative(dir, path.join(e.parentPath, e.name)))
    .sort();
}

/** Generates into a temp dir and returns every difference from `gen/`. */
export function staleGenerated(genDir: string): string[] {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "bs-gen-"));
  const template = fs.readFileSync(path.join(ROOT, "buf.gen.yaml"), "utf8").replace(/out: gen/, `out: ${tmp}/gen`);
  const cfg = path.join(tmp, "buf.gen.yaml");
  fs.writeFileSync(cfg, template);
  execFileSync(BUF, ["generate", "--template", cfg], { cwd: ROOT, stdio: "pipe" });
  const fresh = path.join(tmp, "gen");
  const want = listFiles(fresh);
  const have = listFiles(genDir);
  const diffs: string[] = [];
  for (const f of new Set([...want, ...have])) {
    if (!want.includes(f)) diffs.push(`${f}: not generated from proto/ any more`);
    else if (!have.includes(f)) diffs.push(`${f}: missing from gen/`);
    else if (fs.readFileSync(path.join(fresh, f), "utf8") !== fs.readFileSync(path.join(genDir, f), "utf8")) diffs.push(`${f}: differs`);
  }
  fs.rmSync(tmp, { recursive: true, force: true });
  return diffs;
}

describe("the public contract", function () {
  this.timeout(60_000);

  it("gen/ is what `buf generate` makes from proto/ (run `npm run generate` after editing protos)", () => {
    assert.deepEqual(staleGenerated(path.join(ROOT, "gen")), []);
  });

  it("detects a stale gen/ (the check above can fail)", () => {
    const copy = fs.mkdtempSync(path.join(os.tmpdir(), "bs-stale-"));
    fs.cpSync(path.join(ROOT, "gen"), copy, { recursive: true });
    const f = path.join(copy, "branchsync/v1/sync_pb.ts");
    fs.writeFileSync(f, fs.readFileSync(f, "utf8").replace("Hello", "Helo"));
    const diffs = staleGenerated(copy);
    fs.rmSync(copy, { recursive: true, force: true });
    assert.deepEqual(diffs, ["branchsync/v1/sync_pb.ts: differs"]);
  });

  it("passes buf lint", () => {
    execFileSync(BUF, ["lint"], { cwd: ROOT, stdio: "pipe" });
  });

  it("documents every message, field, enum value and rpc", () => {
    for (const f of fs.readdirSync(path.join(ROOT, "proto/branchsync/v1"))) {
      const lines = fs.readFileSync(path.join(ROOT, "proto/branchsync/v1", f), "utf8").split("\n");
      lines.forEach((line, i) => {
        const t = line.trim();
        const declares = /^(message|enum|service|rpc)\s/.test(t) || /^[a-z0-9_.]+(\s+[a-z_0-9.]+)?\s+[a-z_0-9]+\s*=\s*\d+;$/i.test(t) || /^[A-Z_0-9]+\s*=\s*\d+;$/.test(t);
        if (!declares || t.startsWith("option")) return;
        assert.match(lines[i - 1].trim(), /^\/\//, `${f}:${i + 1} "${t}" has no comment`);
      });
    }
  });

  it("makes no breaking change against the last released contract (buf breaking)", () => {
    execFileSync(BUF, ["breaking", "--against", RELEASED], { cwd: ROOT, stdio: "pipe" });
  });

  it("buf breaking would catch a renumbered field (the check above can fail)", () => {
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "bs-break-"));
    fs.cpSync(path.join(ROOT, "proto"), path.join(tmp, "proto"), { recursive: true });
    fs.copyFileSync(path.join(ROOT, "buf.yaml"), path.join(tmp, "buf.yaml"));
    const f = path.join(tmp, "proto/branchsync/v1/sync.proto");
    fs.writeFileSync(f, fs.readFileSync(f, "utf8").replace("uint64 resume_cursor = 3;", "uint64 resume_cursor = 9;"));
    assert.throws(() => execFileSync(BUF, ["breaking", tmp, "--against", path.join(ROOT, RELEASED)], { cwd: tmp, stdio: "pipe" }));
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  it("has no import cycles (madge)", () => {
    execFileSync(path.join(ROOT, "node_modules/.bin/madge"), ["-c", "--extensions", "ts", "hub", "agent", "lib", "cli"], { cwd: ROOT, stdio: "pipe" });
  });
});
