/**
 * Strict checks of the JSON texts a change carries, for the hub's
 * validation (hub/stream/validate.ts). Parsing every row image with
 * JSON.parse was the largest part of the hub's own CPU per change; a
 * regular expression compiled once per table shape checks a row ten times
 * faster and builds nothing.
 *
 * They answer only "certainly valid" (true) or "look closer" (false): on
 * false the caller parses the text and words the error. So they may refuse
 * what JSON allows (escapes in member names, members out of column order,
 * nested values), but must never accept what the parsing check would
 * refuse.
 */

export type ValueKind = "integer" | "number" | "string" | "boolean" | "array";

const WS = "[ \\t\\n\\r]*";
/**
 * Patterns are built per regular expression: a string's plain run is taken
 * whole by a lookahead and a backreference (JS has no atomic groups), so
 * it is one step that is never backtracked into. That keeps a string that
 * never closes linear (`(?:[^"]+|...)*` is exponential there) and a long
 * one fast (one character per step was 2.5x slower).
 */
class Builder {
  private groups = 0;
  string(): string {
    const g = ++this.groups;
    return `"(?:(?=([^"\\\\\\u0000-\\u001f]+))\\${g}|\\\\["\\\\/bfnrt]|\\\\u[0-9a-fA-F]{4})*"`;
  }
  scalar(): string { return `(?:${this.string()}|${NUMBER}|true|false|null)`; }
  value(kind: ValueKind): string | null {
    switch (kind) {
      case "integer": return INTEGER;
      case "number": return NUMBER;
      case "string": return this.string();
      case "boolean": return "(?:true|false)";
      case "array": return null;
    }
  }
}

// Past 20 digits JSON.parse gives a float, even Infinity, which is no integer.
const INTEGER = "-?(?:0|[1-9][0-9]{0,19})(?![0-9.eE])";
const NUMBER = "-?(?:0|[1-9][0-9]*)(?:\\.[0-9]+)?(?:[eE][+-]?[0-9]+)?";

const escapeRe = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

function test(re: RegExp, s: string): boolean {
  try {
    return re.test(s);
  } catch {
    return false; // a backtracking stack overflow on some monstrous text: parse it instead
  }
}

/** A table's row image as PostgreSQL's to_json prints it: every column, in order, each of its kind. */
export interface RowShape { re: RegExp | null }

/** `nullable`: false for NOT NULL and primary-key columns. Tables with array columns always parse. */
export function rowShape(columns: { name: string; kind: ValueKind; nullable: boolean }[]): RowShape {
  if (columns.length === 0 || columns.some((c) => c.kind === "array")) return { re: null };
  const b = new Builder();
  const members = columns.map((c) => {
    const v = c.nullable ? `(?:${b.value(c.kind)}|null)` : b.value(c.kind);
    return `${escapeRe(JSON.stringify(c.name))}${WS}:${WS}${v}`;
  });
  return { re: new RegExp(`^${WS}\\{${WS}${members.join(`${WS},${WS}`)}${WS}\\}${WS}$`) };
}

export const rowLooksValid = (s: string, shape: RowShape): boolean => shape.re !== null && test(shape.re, s);

const keyPatterns = new Map<number, RegExp>();

/** Whether `s` is certainly a JSON array of `n` scalars. */
export function keyLooksValid(s: string, n: number): boolean {
  let re = keyPatterns.get(n);
  if (!re) {
    const b = new Builder();
    re = new RegExp(`^${WS}\\[${WS}${Array.from({ length: n }, () => b.scalar()).join(`${WS},${WS}`)}${WS}\\]${WS}$`);
    keyPatterns.set(n, re);
  }
  return n > 0 && test(re, s);
}

/**
 * An update's prev, `{"qty":[5],"note":[null]}`: members named among
 * `names` (the non-key columns), each a one-element array of a scalar.
 */
export function prevShape(names: string[]): RegExp {
  const b = new Builder();
  const member = () => `(?:${names.map((n) => escapeRe(JSON.stringify(n))).join("|") || "(?!)"})${WS}:${WS}\\[${WS}${b.scalar()}${WS}\\]`;
  return new RegExp(`^${WS}\\{${WS}(?:${member()}(?:${WS},${WS}${member()})*)?${WS}\\}${WS}$`);
}

export const prevLooksValid = (s: string, shape: RegExp): boolean => test(shape, s);
