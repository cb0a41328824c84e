/**
 * Splits the text of a JSON array (as PostgreSQL's json or jsonb output prints it)
 * into the texts of its elements, without parsing them: the agent reads a
 * capture unit's keys and rows as strings and cuts them here, which spares
 * the branch database (the writer's machine) expanding every row.
 * Elements come out exactly as PostgreSQL printed them on their own.
 */
const QUOTE = 34, BACKSLASH = 92, COMMA = 44, SPACE = 32;
const OPEN_ARR = 91, CLOSE_ARR = 93, OPEN_OBJ = 123, CLOSE_OBJ = 125;

const isSpace = (c: number) => c === SPACE || c === 10 || c === 9 || c === 13;

/** The index of the quote closing the string that opens at `i` (one not escaped by an odd run of backslashes). */
function closingQuote(text: string, i: number): number {
  // Most of a row is inside strings: jump natively instead of per char.
  let q = i;
  for (;;) {
    q = text.indexOf('"', q + 1);
    if (q < 0) throw new Error("unterminated JSON string");
    let b = q - 1;
    while (text.charCodeAt(b) === BACKSLASH) b--;
    if ((q - 1 - b) % 2 === 0) return q;
  }
}

/**
 * The elements of the arrays at nesting `level`: level 1 splits `[a, b]`
 * into one list [a, b]; level 2 splits `[[a, b],[c]]` into [[a, b], [c]],
 * in one pass over the text.
 */
function splitAt(text: string, level: 1 | 2): string[][] {
  const lists: string[][] = [];
  let out: string[] = [];
  let depth = 0;
  let start = -1;
  let end = -1;
  /** Level 2: a comma between lists is allowed only right after a list. */
  let afterList = false;
  /** A comma was the last thing at element level (or between lists): an element must follow. */
  let dangling = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === QUOTE) {
      if (depth < level) throw new Error("not a JSON array");
      if (depth === level && start < 0) { start = i; dangling = false; }
      i = closingQuote(text, i);
      end = i + 1;
    } else if (c === OPEN_ARR || c === OPEN_OBJ) {
      if (depth < level && c !== OPEN_ARR) throw new Error("not a JSON array");
      if (depth === level - 1 && afterList) throw new Error("no comma between JSON arrays");
      if (depth === level && start < 0) { start = i; dangling = false; }
      depth++;
      if (depth === level) { out = []; start = -1; afterList = false; dangling = false; }
    } else if (c === CLOSE_ARR || c === CLOSE_OBJ) {
      if (dangling && depth <= level) throw new Error("trailing comma in JSON array");
      depth--;
      if (depth === level) end = i + 1;
      else if (depth === level - 1) {
        if (start >= 0) out.push(text.slice(start, end));
        start = -1;
        lists.push(out);
        afterList = true;
      }
      if (depth === 0) {
        if (i !== text.length - 1 && text.slice(i + 1).trim() !== "") throw new Error("text after the JSON array");
        return lists;
      }
    } else if (depth === level) {
      if (c === COMMA) {
        if (start < 0) throw new Error("empty JSON array element");
        out.push(text.slice(start, end));
        start = -1;
        dangling = true;
      } else if (!isSpace(c)) {
        if (start < 0) { start = i; dangling = false; }
        end = i + 1;
      }
    } else if (depth > level) {
      // Inside an element: its own brackets and strings are tracked above.
    } else if (depth === 1 && c === COMMA && afterList) {
      afterList = false;
      dangling = true;
    } else if (!isSpace(c)) {
      throw new Error("not a JSON array");
    }
  }
  throw new Error("unterminated JSON array");
}

export function splitJsonArray(text: string): string[] {
  return splitAt(text, 1)[0];
}

/** A JSON array of JSON arrays, `[[1, 2],["a", "b"]]`, as the elements of each inner array. */
export function splitJsonColumns(text: string): string[][] {
  return splitAt(text, 2);
}
