/**
 * A JSON object's members as raw value texts, and back. Row images carry
 * exact decimal literals that a JS number would round, so the hub merges
 * rows column by column on their text and never parses values.
 */
const QUOTE = 34, BACKSLASH = 92, COMMA = 44, COLON = 58;
const OPEN_ARR = 91, CLOSE_ARR = 93, OPEN_OBJ = 123, CLOSE_OBJ = 125;
const isSpace = (c: number) => c === 32 || c === 10 || c === 9 || c === 13;

/** Member name -> raw value text, in the object's order. Throws on malformed text. */
export function splitJsonObject(text: string): Map<string, string> {
  const out = new Map<string, string>();
  let i = 0;
  const skip = () => { while (i < text.length && isSpace(text.charCodeAt(i))) i++; };
  const stringEnd = (from: number) => {
    for (let j = from + 1; j < text.length; j++) {
      const c = text.charCodeAt(j);
      if (c === BACKSLASH) j++;
      else if (c === QUOTE) return j + 1;
    }
    throw new Error("unterminated JSON string");
  };
  const valueEnd = (from: number) => {
    const c0 = text.charCodeAt(from);
    if (c0 === QUOTE) return stringEnd(from);
    if (c0 !== OPEN_ARR && c0 !== OPEN_OBJ) {
      let j = from;
      while (j < text.length) {
        const c = text.charCodeAt(j);
        if (c === COMMA || c === CLOSE_OBJ || isSpace(c)) break;
        j++;
      }
      if (j === from) throw new Error("empty JSON value");
      return j;
    }
    let depth = 0;
    for (let j = from; j < text.length; j++) {
      const c = text.charCodeAt(j);
      if (c === QUOTE) { j = stringEnd(j) - 1; continue; }
      if (c === OPEN_ARR || c === OPEN_OBJ) depth++;
      else if (c === CLOSE_ARR || c === CLOSE_OBJ) { depth--; if (depth === 0) return j + 1; }
    }
    throw new Error("unterminated JSON value");
  };
  skip();
  if (text.charCodeAt(i) !== OPEN_OBJ) throw new Error("not a JSON object");
  i++;
  skip();
  if (text.charCodeAt(i) === CLOSE_OBJ) { i++; skip(); if (i !== text.length) throw new Error("text after the JSON object"); return out; }
  for (;;) {
    skip();
    if (text.charCodeAt(i) !== QUOTE) throw new Error("JSON object member name expected");
    const ke = stringEnd(i);
    const name = JSON.parse(text.slice(i, ke)) as string;
    i = ke;
    skip();
    if (text.charCodeAt(i) !== COLON) throw new Error("':' expected in JSON object");
    i++;
    skip();
    const ve = valueEnd(i);
    out.set(name, text.slice(i, ve));
    i = ve;
    skip();
    const c = text.charCodeAt(i);
    i++;
    if (c === CLOSE_OBJ) break;
    if (c !== COMMA) throw new Error("',' or '}' expected in JSON object");
  }
  skip();
  if (i !== text.length) throw new Error("text after the JSON object");
  return out;
}

export function joinJsonObject(members: Map<string, string>): string {
  const parts: string[] = [];
  for (const [k, v] of members) parts.push(`${JSON.stringify(k)}: ${v}`);
  return `{${parts.join(", ")}}`;
}
