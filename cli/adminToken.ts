import fs from "node:fs";
import path from "node:path";
import { randomBytes } from "node:crypto";

const FILE = () => path.resolve(process.env.BRANCHSYNC_HOME ?? ".branchsync", "admin-token");

export function readAdminTokenFile(): string {
  try { return fs.readFileSync(FILE(), "utf8").trim(); } catch { return ""; }
}

/** For a hub started without ADMIN_TOKEN: reuse or create one, readable by this user only. */
export function ensureAdminTokenFile(): { token: string; file: string } {
  const file = FILE();
  const existing = readAdminTokenFile();
  if (existing) return { token: existing, file };
  const token = randomBytes(24).toString("base64url");
  fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  fs.writeFileSync(file, token + "\n", { mode: 0o600 });
  return { token, file };
}
