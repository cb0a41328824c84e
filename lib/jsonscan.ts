/**
 * Strict, allocation-free checks of the JSON texts a change carries, for
 * the hub's validation (hub/stream/validate.ts). Parsing every row image
 * with JSON.parse was the largest part of the hub's own CPU per change;
 * these scan the text once and build nothing.
 *
 * They answer only "certainly valid" (true) or "look closer" (false): on
 * false the caller parses the text and words the error. So they may refuse
 * what JSON allows (escapes in keys, members out of column order, nested
 * values), but must never accept what the parsing check would refuse.
 */

export type ValueKind = "integer" | "number" | "string" | "boolean" | "array";

/** A table's row image as PostgreSQL's to_json prints it: every column, in order. */
export interface RowShape {
  /** Each column's name as a JSON string literal, `"qty"`. */
  quoted: string[];
  kinds: ValueKind[];
  /** False for NOT NULL and primary-key columns. */
  nullable: boolean[];
}

const SPACE = 32, TAB = 9, LF = 10, CR = 13, QUOTE = 34, BACKSLASH = 92, COMMA = 44, COLON = 58;
const MINUS = 45, PLUS = 43, DOT = 46, ZERO = 48, NINE = 57, E_LOWER = 101, E_UPPER = 69;
const OPEN_ARR = 91, CLOSE_ARR = 93, OPEN_OBJ = 123, CLOSE_OBJ = 125;

function ws(s: string, i: number): number {
  for (;;) {
    const c = s.charCodeAt(i);
    if (c !== SPACE && c !== TAB && c !== LF && c !== CR) return i;
    i++;
  }
}

const isDigit = (c: number) => c >= ZERO && c <= NINE;
const isHex = (c: number) => isDigit(c) || (c >= 65 && c <= 70) || (c >= 97 && c <= 102);
/** " \ / b f n r t: what may follow a backslash, besides u and four hex digits. */
const SIMPLE_ESCAPES = new Set([QUOTE, BACKSLASH, 47, 98, 102, 110, 114, 116]);

const PLAIN = /[^"\\\u0000-\u001f]*/y;

/** End of the JSON string starting at `i`, or -1. */
function str(s: string, i: number): number {
  if (s.charCodeAt(i) !== QUOTE) return -1;
  for (let j = i + 1; j < s.length;) {
    // Runs of plain characters natively (a sticky regex test allocates nothing).
    PLAIN.lastIndex = j;
    PLAIN.test(s);
    j = PLAIN.lastIndex;
    const c = s.charCodeAt(j);
    if (c === QUOTE) return j + 1;
    if (c !== BACKSLASH) return -1;
    const e = s.charCodeAt(j + 1);
    if (SIMPLE_ESCAPES.has(e)) { j += 2; continue; }
    if (e !== 117 || !(isHex(s.charCodeAt(j + 2)) && isHex(s.charCodeAt(j + 3)) && isHex(s.charCodeAt(j + 4)) && isHex(s.charCodeAt(j + 5)))) return -1;
    j += 6;
  }
  return -1;
}

function digits(s: string, i: number): number {
  const start = i;
  while (isDigit(s.charCodeAt(i))) i++;
  return i > start ? i : -1;
}

/** End of the JSON number starting at `i`, or -1; `integer`: no fraction or exponent. */
function num(s: string, i: number, integer: boolean): number {
  if (s.charCodeAt(i) === MINUS) i++;
  const start = i;
  if (s.charCodeAt(i) === ZERO) i++;
  else if ((i = digits(s, i)) < 0) return -1;
  // Past 20 digits JSON.parse gives a float, even Infinity, which is no integer.
  if (integer) return i - start <= 20 ? i : -1;
  if (s.charCodeAt(i) === DOT && (i = digits(s, i + 1)) < 0) return -1;
  const e = s.charCodeAt(i);
  if (e === E_LOWER || e === E_UPPER) {
    i++;
    const sign = s.charCodeAt(i);
    if (sign === PLUS || sign === MINUS) i++;
    if ((i = digits(s, i)) < 0) return -1;
  }
  return i;
}

const lit = (s: string, i: number, word: string) => (s.startsWith(word, i) ? i + word.length : -1);

/** End of a scalar of `kind` starting at `i` (null when `nullable`), or -1. */
function scalar(s: string, i: number, kind: ValueKind | "any", nullable: boolean): number {
  if (s.charCodeAt(i) === 110) return nullable ? lit(s, i, "null") : -1;
  switch (kind) {
    case "integer": return num(s, i, true);
    case "number": return num(s, i, false);
    case "string": return str(s, i);
    case "boolean": return s.charCodeAt(i) === 116 ? lit(s, i, "true") : lit(s, i, "false");
    case "array": return -1;
    case "any": {
      const c = s.charCodeAt(i);
      if (c === QUOTE) return str(s, i);
      if (c === 116) return lit(s, i, "true");
      if (c === 102) return lit(s, i, "false");
      return num(s, i, false);
    }
  }
}

/** Whether `s` is certainly an object holding exactly the shape's columns, in order, each of its kind. */
export function rowLooksValid(s: string, shape: RowShape): boolean {
  let i = ws(s, 0);
  if (s.charCodeAt(i) !== OPEN_OBJ) return false;
  const n = shape.quoted.length;
  for (let k = 0; k < n; k++) {
    i = ws(s, i + 1);
    if (!s.startsWith(shape.quoted[k], i)) return false;
    i = ws(s, i + shape.quoted[k].length);
    if (s.charCodeAt(i) !== COLON) return false;
    i = scalar(s, ws(s, i + 1), shape.kinds[k], shape.nullable[k]);
    if (i < 0) return false;
    i = ws(s, i);
    if (s.charCodeAt(i) !== (k === n - 1 ? CLOSE_OBJ : COMMA)) return false;
  }
  return n > 0 && ws(s, i + 1) === s.length;
}

/** Whether `s` is certainly a JSON array of `n` scalars. */
export function keyLooksValid(s: string, n: number): boolean {
  let i = ws(s, 0);
  if (s.charCodeAt(i) !== OPEN_ARR || n === 0) return false;
  for (let k = 0; k < n; k++) {
    i = scalar(s, ws(s, i + 1), "any", true);
    if (i < 0) return false;
    i = ws(s, i);
    if (s.charCodeAt(i) !== (k === n - 1 ? CLOSE_ARR : COMMA)) return false;
  }
  return ws(s, i + 1) === s.length;
}

/**
 * Whether `s` is certainly an update's prev, `{"qty":[5],"note":[null]}`:
 * members named by `allowed` (non-key columns, as JSON string literals),
 * each a one-element array of a scalar.
 */
export function prevLooksValid(s: string, allowed: Set<string>): boolean {
  let i = ws(s, 0);
  if (s.charCodeAt(i) !== OPEN_OBJ) return false;
  i = ws(s, i + 1);
  if (s.charCodeAt(i) === CLOSE_OBJ) return ws(s, i + 1) === s.length;
  for (;;) {
    const end = str(s, i);
    if (end < 0 || !allowed.has(s.slice(i, end))) return false;
    i = ws(s, end);
    if (s.charCodeAt(i) !== COLON) return false;
    i = ws(s, i + 1);
    if (s.charCodeAt(i) !== OPEN_ARR) return false;
    i = scalar(s, ws(s, i + 1), "any", true);
    if (i < 0) return false;
    i = ws(s, i);
    if (s.charCodeAt(i) !== CLOSE_ARR) return false;
    i = ws(s, i + 1);
    const c = s.charCodeAt(i);
    if (c === CLOSE_OBJ) return ws(s, i + 1) === s.length;
    if (c !== COMMA) return false;
    i = ws(s, i + 1);
  }
}
