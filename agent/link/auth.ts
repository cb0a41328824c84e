/**
 * The agent's one AuthService call, IssueToken, in the Connect protocol's
 * unary JSON form (POST /branchsync.v1.AuthService/IssueToken, proto JSON
 * field names, int64 as a string; an error is a non-200 status with
 * {"code", "message"}) over node:http(s). The Connect client library cost a
 * starting agent 70 ms of module loading for this single request, and an
 * agent restarting to catch up on a backlog applies nothing until it has a
 * token.
 */
import http from "node:http";
import https from "node:https";

export interface IssuedToken { token: string; expiresAt: number; tenantId: string; branchId: string }

/** Aborts a request that gets no answer (the hub's auth is a few ms). */
const ISSUE_TOKEN_TIMEOUT_MS = 15_000;

export class AuthCallError extends Error {
  constructor(readonly code: string, message: string) { super(message); }
}

export function issueToken(baseUrl: string, apiKey: string): Promise<IssuedToken> {
  const url = new URL("branchsync.v1.AuthService/IssueToken", baseUrl.endsWith("/") ? baseUrl : `${baseUrl}/`);
  const body = JSON.stringify({ apiKey });
  const lib = url.protocol === "https:" ? https : http;
  return new Promise((resolve, reject) => {
    const req = lib.request(url, {
      method: "POST",
      headers: { "content-type": "application/json", "connect-protocol-version": "1", "content-length": Buffer.byteLength(body) },
    }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("error", reject);
      res.on("end", () => {
        const text = Buffer.concat(chunks).toString("utf8");
        let json: Record<string, unknown>;
        try { json = JSON.parse(text); } catch {
          reject(new AuthCallError("unknown", `IssueToken at ${url.origin}: HTTP ${res.statusCode}, not a Connect JSON answer: ${text.slice(0, 200)}`));
          return;
        }
        if (res.statusCode !== 200) {
          const code = typeof json.code === "string" ? json.code : "unknown";
          reject(new AuthCallError(code, `IssueToken at ${url.origin}: ${code}: ${String(json.message ?? `HTTP ${res.statusCode}`)}`));
          return;
        }
        resolve({ token: String(json.token ?? ""), expiresAt: Number(json.expiresAt ?? 0), tenantId: String(json.tenantId ?? ""), branchId: String(json.branchId ?? "") });
      });
    });
    req.setTimeout(ISSUE_TOKEN_TIMEOUT_MS, () => req.destroy(new AuthCallError("deadline_exceeded", `IssueToken at ${url.origin}: no answer in ${ISSUE_TOKEN_TIMEOUT_MS / 1000} s`)));
    req.on("error", (e) => reject(e instanceof AuthCallError ? e : new AuthCallError("unavailable", `IssueToken at ${url.origin}: ${e.message}`)));
    req.end(body);
  });
}
