/**
 * Splits the text of a JSON array (as PostgreSQL's json or jsonb output prints it)
 * into the texts of its elements, without parsing them: the agent reads a
 * capture unit's keys and rows as two strings and cuts them here, which
 * spares the branch database (the writer's machine) expanding every row.
 * Elements come out exactly as jsonb prints them on their own.
 */
const QUOTE = 34, BACKSLASH = 92, COMMA = 44, SPACE = 32;
const OPEN_ARR = 91, CLOSE_ARR = 93, OPEN_OBJ = 123, CLOSE_OBJ = 125;

export function splitJsonArray(text: string): string[] {
  const out: string[] = [];
  let depth = 0;
  let start = -1;
  let end = -1;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === QUOTE) {
      if (depth === 1 && start < 0) start = i;
      // Most of a row is inside strings: jump to the closing quote natively
      // (one not escaped by an odd run of backslashes) instead of per char.
      let q = i;
      for (;;) {
        q = text.indexOf('"', q + 1);
        if (q < 0) throw new Error("unterminated JSON string");
        let b = q - 1;
        while (text.charCodeAt(b) === BACKSLASH) b--;
        if ((q - 1 - b) % 2 === 0) break;
      }
      i = q;
      end = q + 1;
    } else if (c === OPEN_ARR || c === OPEN_OBJ) {
      if (depth === 0 && c !== OPEN_ARR) throw new Error("not a JSON array");
      if (depth === 1 && start < 0) start = i;
      depth++;
    } else if (c === CLOSE_ARR || c === CLOSE_OBJ) {
      depth--;
      if (depth === 1) end = i + 1;
      if (depth === 0) {
        if (start >= 0) out.push(text.slice(start, end));
        if (i !== text.length - 1 && text.slice(i + 1).trim() !== "") throw new Error("text after the JSON array");
        return out;
      }
    } else if (depth === 1) {
      if (c === COMMA) {
        if (start < 0) throw new Error("empty JSON array element");
        out.push(text.slice(start, end));
        start = -1;
      } else if (c !== SPACE && c !== 10 && c !== 9 && c !== 13) {
        if (start < 0) start = i;
        end = i + 1;
      }
    } else if (depth === 0 && c !== SPACE) {
      throw new Error("not a JSON array");
    }
  }
  throw new Error("unterminated JSON array");
}
