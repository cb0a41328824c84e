/**
 * Exact addition of decimal literals as PostgreSQL prints integers and
 * numerics ("-12.50"), for counter columns: a JS number would round.
 */
const PLAIN = /^(-?)(\d+)(?:\.(\d+))?$/;

function parse(s: string): { v: bigint; scale: number } | null {
  const m = PLAIN.exec(s);
  if (!m) return null;
  const frac = m[3] ?? "";
  const v = BigInt(m[2] + frac);
  return { v: m[1] ? -v : v, scale: frac.length };
}

function format(v: bigint, scale: number): string {
  const neg = v < 0n;
  let digits = (neg ? -v : v).toString();
  if (scale > 0) {
    digits = digits.padStart(scale + 1, "0");
    digits = `${digits.slice(0, -scale)}.${digits.slice(-scale)}`;
  }
  return neg ? `-${digits}` : digits;
}

/** a + b - c, or null if any of them is not a plain decimal (NULL, NaN, Infinity). */
export function addDelta(a: string, b: string, c: string): string | null {
  const [x, y, z] = [parse(a), parse(b), parse(c)];
  if (!x || !y || !z) return null;
  const scale = Math.max(x.scale, y.scale, z.scale);
  const up = (p: { v: bigint; scale: number }) => p.v * 10n ** BigInt(scale - p.scale);
  return format(up(x) + up(y) - up(z), scale);
}
