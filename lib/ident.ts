/**
 * Identifiers reach SQL only through here: validated against a strict
 * pattern and double-quoted. Values never do; they go as parameters.
 */
const IDENT = /^[a-z_][a-z0-9_$]{0,62}$/;

export function isIdent(s: string): boolean {
  return IDENT.test(s);
}

export function quoteIdent(s: string): string {
  if (!IDENT.test(s)) throw new Error(`invalid identifier "${s}"`);
  return `"${s}"`;
}

/** "public.items" -> "public"."items"; throws unless both parts are valid. */
export function quoteQualified(name: string): string {
  const parts = name.split(".");
  if (parts.length !== 2) throw new Error(`table name "${name}" must be schema-qualified, e.g. public.items`);
  return `${quoteIdent(parts[0])}.${quoteIdent(parts[1])}`;
}

export function isQualified(name: string): boolean {
  const parts = name.split(".");
  return parts.length === 2 && IDENT.test(parts[0]) && IDENT.test(parts[1]);
}

export const TENANT_ID = /^[a-z][a-z0-9_]{0,29}$/;
export const BRANCH_ID = /^[a-z][a-z0-9_-]{0,29}$/;
