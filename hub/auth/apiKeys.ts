/**
 * Branch API keys: "bsk_<key id>_<secret>". Only sha256(secret) is stored;
 * the secret has 256 bits of entropy, so a plain hash is enough (no KDF).
 */
import type pg from "pg";
import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import { StatusError, Status } from "../errors.ts";

const KEY_FORMAT = /^bsk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$/;

const sha256 = (s: string) => createHash("sha256").update(s).digest();

export async function createApiKey(pool: pg.Pool, tenantId: string, branchId: string): Promise<string> {
  const keyId = randomBytes(8).toString("hex");
  const secret = randomBytes(32).toString("base64url");
  await pool.query(
    "INSERT INTO branchsync.api_keys(key_id, tenant_id, branch_id, secret_sha256) VALUES ($1, $2, $3, $4)",
    [keyId, tenantId, branchId, sha256(secret)]);
  return `bsk_${keyId}_${secret}`;
}

/** Returns the key's identity, or throws UNAUTHENTICATED without saying which part was wrong. */
export async function verifyApiKey(pool: pg.Pool, apiKey: string): Promise<{ tenantId: string; branchId: string }> {
  const bad = new StatusError(Status.UNAUTHENTICATED, "invalid API key; create a new one with `branchsync admin branch create`");
  const m = KEY_FORMAT.exec(apiKey.trim());
  if (!m) throw bad;
  const { rows } = await pool.query(
    "SELECT tenant_id, branch_id, secret_sha256 FROM branchsync.api_keys WHERE key_id = $1 AND revoked_at IS NULL", [m[1]]);
  if (rows.length === 0) throw bad;
  const expected: Buffer = rows[0].secret_sha256;
  if (!timingSafeEqual(expected, sha256(m[2]))) throw bad;
  return { tenantId: rows[0].tenant_id, branchId: rows[0].branch_id };
}
