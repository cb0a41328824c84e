/**
 * Short-lived ES256 access tokens. Signing keys live in the hub database so
 * that every replica signs and verifies with the same set; the public half
 * is published as JWKS for Envoy's jwt_authn.
 */
import type pg from "pg";
import {
  SignJWT, jwtVerify, generateKeyPair, exportJWK, importJWK, createLocalJWKSet, errors as joseErrors,
  type JWK, type JSONWebKeySet, type CryptoKey,
} from "jose";
import { randomBytes } from "node:crypto";
import { StatusError, Status } from "../errors.ts";

export const ISSUER = "branchsync-hub";
export const AUDIENCE = "branchsync";
const ALG = "ES256";

export interface Identity { tenantId: string; branchId: string; /** Token expiry, seconds since the epoch (0 = none). */ expiresAt?: number }

export interface TokenService {
  issue(id: Identity): Promise<{ token: string; expiresAt: number }>;
  verify(token: string): Promise<Identity>;
  jwks(): JSONWebKeySet;
}

interface KeyRow { kid: string; private_jwk: JWK; public_jwk: JWK }

async function ensureKey(pool: pg.Pool): Promise<void> {
  const { rowCount } = await pool.query("SELECT 1 FROM branchsync.signing_keys LIMIT 1");
  if (rowCount) return;
  const { privateKey, publicKey } = await generateKeyPair(ALG, { extractable: true });
  const kid = randomBytes(8).toString("hex");
  const pub = { ...(await exportJWK(publicKey)), kid, alg: ALG, use: "sig" };
  const priv = { ...(await exportJWK(privateKey)), kid, alg: ALG };
  // Replicas racing at first start: whichever key lands first wins for all.
  await pool.query(
    `INSERT INTO branchsync.signing_keys(kid, private_jwk, public_jwk)
     SELECT $1, $2, $3 WHERE NOT EXISTS (SELECT 1 FROM branchsync.signing_keys)`,
    [kid, priv, pub]);
}

export async function makeTokenService(pool: pg.Pool, ttlSeconds: number): Promise<TokenService> {
  await ensureKey(pool);
  let keys: KeyRow[] = [];
  let signing: { kid: string; key: CryptoKey | Uint8Array };
  let set: ReturnType<typeof createLocalJWKSet>;
  let jwks: JSONWebKeySet;
  const load = async () => {
    const { rows } = await pool.query<KeyRow>("SELECT kid, private_jwk, public_jwk FROM branchsync.signing_keys ORDER BY created_at DESC");
    keys = rows;
    signing = { kid: rows[0].kid, key: await importJWK(rows[0].private_jwk, ALG) };
    jwks = { keys: keys.map((k) => k.public_jwk) };
    set = createLocalJWKSet(jwks);
  };
  await load();
  return {
    async issue(id) {
      const now = Math.floor(Date.now() / 1000);
      const token = await new SignJWT({ tenant: id.tenantId })
        .setProtectedHeader({ alg: ALG, kid: signing.kid, typ: "JWT" })
        .setIssuer(ISSUER).setAudience(AUDIENCE).setSubject(id.branchId)
        .setIssuedAt(now).setExpirationTime(now + ttlSeconds)
        .sign(signing.key);
      return { token, expiresAt: now + ttlSeconds };
    },
    verify: (token) => verifyWith(token, true),
    jwks: () => jwks,
  };

  async function verifyWith(token: string, reloadOnUnknownKey: boolean): Promise<Identity> {
      try {
        const { payload } = await jwtVerify(token, set, { issuer: ISSUER, audience: AUDIENCE, algorithms: [ALG] });
        if (typeof payload.tenant !== "string" || typeof payload.sub !== "string") {
          throw new StatusError(Status.UNAUTHENTICATED, "token lacks tenant or branch claims");
        }
        return { tenantId: payload.tenant, branchId: payload.sub, expiresAt: payload.exp ?? 0 };
      } catch (e) {
        if (e instanceof StatusError) throw e;
        if (e instanceof joseErrors.JWTExpired) throw new StatusError(Status.UNAUTHENTICATED, "token expired; request a new one with AuthService.IssueToken");
        if (e instanceof joseErrors.JWKSNoMatchingKey && reloadOnUnknownKey) {
          await load(); // another replica may have added a key since we loaded
          return verifyWith(token, false);
        }
        throw new StatusError(Status.UNAUTHENTICATED, "invalid token; request a new one with AuthService.IssueToken");
      }
  }
}
