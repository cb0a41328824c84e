/**
 * One place where env vars and flags become validated config. Every option is
 * declared with the env var and flag that set it; a flag wins over the env.
 * Anything wrong raises ConfigError, which the CLI prints as one line and
 * turns into exit code 2.
 */
export class ConfigError extends Error {}

export interface Option<T> {
  env: string;
  flag: string;
  help: string;
  default?: T;
  parse: (raw: string, name: string) => T;
}

export type Spec = Record<string, Option<unknown>>;
export type ConfigOf<S extends Spec> = { [K in keyof S]: S[K] extends Option<infer T> ? T : never };

export const str = (help: string, env: string, flag: string, def?: string): Option<string> => ({
  env, flag, help, default: def, parse: (raw, name) => {
    if (raw.trim() === "") throw new ConfigError(`${name} must not be empty`);
    return raw;
  },
});

export const int = (help: string, env: string, flag: string, def: number | undefined, min: number, max: number): Option<number> => ({
  env, flag, help, default: def, parse: (raw, name) => {
    if (!/^-?\d+$/.test(raw.trim())) throw new ConfigError(`${name} must be an integer, got "${raw}"`);
    const n = Number(raw);
    if (n < min || n > max) throw new ConfigError(`${name} must be between ${min} and ${max}, got ${n}`);
    return n;
  },
});

/**
 * libpq's URIs may name a user and no host, `postgresql://app@/db?host=/run/postgresql`
 * (the host, a Unix socket directory, comes as a parameter), which WHATWG
 * URLs refuse; node-postgres reads them as libpq does. The stand-in host
 * is only for this check: the URL passes on unchanged.
 */
function parseUrl(raw: string): URL | null {
  for (const candidate of [raw, raw.replace(/^(postgres(?:ql)?:\/\/[^/?#@]*@)(?=[/?])/i, "$1localhost")]) {
    try { return new URL(candidate); } catch { /* try the next reading */ }
  }
  return null;
}

export const url = (help: string, env: string, flag: string, protocols: string[], def?: string): Option<string> => ({
  env, flag, help, default: def, parse: (raw, name) => {
    const u = parseUrl(raw);
    if (!u) throw new ConfigError(`${name} is not a URL: "${redact(raw)}"`);
    if (!protocols.includes(u.protocol)) {
      throw new ConfigError(`${name} must use ${protocols.join(" or ")}, got "${u.protocol}"`);
    }
    return raw;
  },
});

export const bool = (help: string, env: string, flag: string, def: boolean): Option<boolean> => ({
  env, flag, help, default: def, parse: (raw, name) => {
    if (/^(1|true|yes|on)$/i.test(raw)) return true;
    if (/^(0|false|no|off)$/i.test(raw)) return false;
    throw new ConfigError(`${name} must be true or false, got "${raw}"`);
  },
});

export const list = (help: string, env: string, flag: string, itemPattern: RegExp, def?: string[]): Option<string[]> => ({
  env, flag, help, default: def, parse: (raw, name) => {
    const items = raw.split(",").map((s) => s.trim()).filter(Boolean);
    if (items.length === 0) throw new ConfigError(`${name} must list at least one item`);
    for (const it of items) {
      if (!itemPattern.test(it)) throw new ConfigError(`${name}: "${it}" does not match ${itemPattern}`);
    }
    return items;
  },
});

export const pattern = (help: string, env: string, flag: string, re: RegExp, def?: string): Option<string> => ({
  env, flag, help, default: def, parse: (raw, name) => {
    if (!re.test(raw)) throw new ConfigError(`${name} "${raw}" does not match ${re}`);
    return raw;
  },
});

/** Hides a password in a connection URL so config errors never print secrets. */
export function redact(raw: string): string {
  return raw.replace(/\/\/([^:/@]+):[^@]*@/, "//$1:***@");
}

/** Splits `--flag value` / `--flag=value` pairs; anything else is positional. */
export function splitArgs(argv: string[]): { flags: Map<string, string>; positional: string[] } {
  const flags = new Map<string, string>();
  const positional: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith("--")) { positional.push(a); continue; }
    const eq = a.indexOf("=");
    if (eq > 0) { flags.set(a.slice(2, eq), a.slice(eq + 1)); continue; }
    const next = argv[i + 1];
    if (next === undefined || next.startsWith("--")) { flags.set(a.slice(2), "true"); continue; }
    flags.set(a.slice(2), next);
    i++;
  }
  return { flags, positional };
}

export function parseConfig<S extends Spec>(spec: S, flags: Map<string, string>, env: NodeJS.ProcessEnv): ConfigOf<S> {
  const known = new Set(Object.values(spec).map((o) => o.flag));
  for (const f of flags.keys()) {
    if (f !== "help" && !known.has(f)) throw new ConfigError(`unknown flag --${f} (see --help)`);
  }
  const out: Record<string, unknown> = {};
  for (const [key, opt] of Object.entries(spec)) {
    const raw = flags.get(opt.flag) ?? env[opt.env];
    const name = flags.has(opt.flag) ? `--${opt.flag}` : opt.env;
    if (raw === undefined || raw === "") {
      if (opt.default === undefined) throw new ConfigError(`${opt.env} (or --${opt.flag}) is required: ${opt.help}`);
      out[key] = opt.default;
      continue;
    }
    out[key] = opt.parse(raw, name);
  }
  return out as ConfigOf<S>;
}

export function helpText(title: string, spec: Spec): string {
  const rows = Object.values(spec).map((o) => {
    const def = o.default === undefined ? "required" : `default ${JSON.stringify(o.default)}`;
    return `  --${o.flag.padEnd(22)} ${o.env.padEnd(24)} ${o.help} (${def})`;
  });
  return `${title}\n\nOptions (flag, env var):\n${rows.join("\n")}\n`;
}
