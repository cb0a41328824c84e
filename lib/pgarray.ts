/**
 * PostgreSQL array literals for text-format parameters, built in one pass.
 * node-postgres turns a JS array parameter into the same literal, but runs
 * two regex replaces on every element; the hub sends four such arrays per
 * change it appends, and keys almost never hold a quote or a backslash.
 */

/** `{"a","b"}`: every element quoted, so NULL, empty and spaced strings stay text. */
export function textArray(values: readonly string[]): string {
  const parts = new Array<string>(values.length);
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    parts[i] = v.indexOf('"') < 0 && v.indexOf("\\") < 0 ? `"${v}"` : `"${v.replace(/[\\"]/g, "\\$&")}"`;
  }
  return `{${parts.join(",")}}`;
}

/** `{1,2,3}` for integers (numbers or bigints). */
export function intArray(values: readonly (number | bigint)[]): string {
  return `{${values.join(",")}}`;
}
