// Offline validator for envoy/envoy.yaml.
//
// Envoy is not installable on the build machines, so the bootstrap is checked against Envoy's
// own v3 API protos (the copy shipped in @grpc/grpc-js-xds under deps/), loaded with protobufjs:
//
//   1. schema: every key at every level (including inside each `typed_config` Any, resolved by
//      its `@type`) must be a field of the message; values must have the right JSON shape;
//      at most one member of a oneof; no deprecated fields or enum values. protobufjs'
//      fromObject silently drops unknown fields, so the object is walked here, by hand.
//   2. protoc-gen-validate: the commonly used `(validate.rules)` (required, min_len, ranges,
//      min_items, enum defined_only, duration bounds, oneof required, ...) are enforced,
//      since a plain parse does not (Envoy rejects such configs at startup).
//   3. integrity: every referenced cluster exists (routes, jwt_authn remote JWKS, gRPC
//      services), names are unique, the router filter is last, jwt rules name real
//      providers, gRPC health checks only on HTTP/2 clusters.
//   4. the converted object is packed into the real envoy.config.bootstrap.v3.Bootstrap
//      message (every Any encoded with its resolved type) and round-tripped through binary.
//
// CLI: node --import tsx envoy/validate.ts [envoy/envoy.yaml]   (exit status 1 on issues)

import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { createRequire } from "node:module";
import { fileURLToPath, pathToFileURL } from "node:url";
import protobuf from "protobufjs";
import { parseDocument } from "yaml";

const require = createRequire(import.meta.url);

export interface Fact {
  path: string;
  value: Record<string, unknown>;
}

export interface EnvoyProtos {
  root: protobuf.Root;
  /** Finds a message type by full name, loading its package's .proto files on demand. */
  resolveType(fullName: string): protobuf.Type | null;
  includeDirs: string[];
  /** The validate.proto copy actually loaded (patched unless patchValidate: false). */
  validateProtoPath: string;
}

export interface ValidationResult {
  issues: string[];
  /** Canonical (snake_case keys) JSON form, `@type` kept in Anys. Present when schema-valid. */
  config?: Record<string, unknown>;
  /** The real Bootstrap message (Anys packed), present when there are no schema issues. */
  bootstrap?: protobuf.Message;
  /** Every visited message, by full type name (e.g. "envoy.config.route.v3.RouteAction"). */
  facts: Map<string, Fact[]>;
}

// ---------------------------------------------------------------------------------------------
// Loading the protos

function depsDir(): string {
  const pkg = require.resolve("@grpc/grpc-js-xds/package.json");
  return path.join(path.dirname(pkg), "deps");
}

/**
 * The protoc-gen-validate copy bundled with grpc-js-xds predates the envoy-api snapshot next to
 * it (envoy-api uses `ignore_empty` on string rules). Returns the patched text.
 */
export function patchValidateProto(text: string): string {
  const start = text.indexOf("message StringRules {");
  if (start < 0) throw new Error("validate.proto: message StringRules not found");
  let depth = 0;
  let end = -1;
  for (let i = text.indexOf("{", start); i < text.length; i++) {
    if (text[i] === "{") depth++;
    else if (text[i] === "}" && --depth === 0) {
      end = i;
      break;
    }
  }
  if (end < 0) throw new Error("validate.proto: unterminated StringRules");
  const body = text.slice(start, end);
  if (/\bignore_empty\s*=/.test(body)) return text;
  return text.slice(0, end) + "    optional bool ignore_empty = 26;\n" + text.slice(end);
}

const cache = new Map<boolean, EnvoyProtos>();

/**
 * Loads Envoy's bootstrap protos (other packages load on demand). `patchValidate: false` uses
 * the bundled, outdated validate.proto as is: only for showing that the patch is needed.
 */
export function loadEnvoyProtos(opts: { patchValidate?: boolean } = {}): EnvoyProtos {
  const patch = opts.patchValidate ?? true;
  const hit = cache.get(patch);
  if (hit) return hit;
  const deps = depsDir();
  const original = path.join(deps, "protoc-gen-validate", "validate", "validate.proto");
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "envoy-protos-"));
  process.once("exit", () => fs.rmSync(tmp, { recursive: true, force: true }));
  const patched = path.join(tmp, "validate", "validate.proto");
  fs.mkdirSync(path.dirname(patched));
  const text = fs.readFileSync(original, "utf8");
  fs.writeFileSync(patched, patch ? patchValidateProto(text) : text);

  // Order matters: the patched validate.proto shadows the bundled one. google/protobuf/*.proto
  // (descriptor.proto is not among protobufjs' built-in "common" files) come from protobufjs.
  const includeDirs = [
    tmp,
    path.join(deps, "envoy-api"),
    path.join(deps, "xds"),
    path.join(deps, "protoc-gen-validate"),
    path.join(deps, "googleapis"),
    path.dirname(require.resolve("protobufjs/package.json")),
  ];
  const root = new protobuf.Root();
  root.resolvePath = (_origin: string, target: string) => {
    if (path.isAbsolute(target)) return target;
    for (const dir of includeDirs) {
      const p = path.join(dir, target);
      if (fs.existsSync(p)) return p;
    }
    return target;
  };
  const load = (files: string[]) => {
    root.loadSync(files, { keepCase: true });
    root.resolveAll();
  };
  load(["envoy/config/bootstrap/v3/bootstrap.proto", "xds/type/v3/typed_struct.proto", "udpa/type/v1/typed_struct.proto"]);

  const loadedPackages = new Set<string>();
  const resolveType = (fullName: string): protobuf.Type | null => {
    const found = root.lookup(fullName);
    if (found instanceof protobuf.Type) return found;
    if (found) return null;
    const parts = fullName.split(".");
    const firstType = parts.findIndex((p) => /^[A-Z]/.test(p));
    const pkg = parts.slice(0, firstType < 0 ? parts.length - 1 : firstType);
    const key = pkg.join(".");
    if (pkg.length === 0 || loadedPackages.has(key)) return null;
    loadedPackages.add(key);
    for (const dir of includeDirs) {
      const pkgDir = path.join(dir, ...pkg);
      if (!fs.existsSync(pkgDir) || !fs.statSync(pkgDir).isDirectory()) continue;
      const files = fs
        .readdirSync(pkgDir)
        .filter((f) => f.endsWith(".proto"))
        .map((f) => path.join(pkgDir, f));
      if (files.length > 0) load(files);
    }
    const again = root.lookup(fullName);
    return again instanceof protobuf.Type ? again : null;
  };
  const protos = { root, resolveType, includeDirs, validateProtoPath: patched };
  cache.set(patch, protos);
  return protos;
}

// ---------------------------------------------------------------------------------------------
// Helpers

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === "object" && v !== null && !Array.isArray(v);
const describe = (v: unknown) => (v === null ? "null" : Array.isArray(v) ? "array" : typeof v);
const show = (v: unknown) => JSON.stringify(v);

const WRAPPERS = new Set(
  ["Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String", "Bytes"].map((w) => `google.protobuf.${w}Value`),
);
const TYPED_STRUCTS = new Set(["xds.type.v3.TypedStruct", "udpa.type.v1.TypedStruct"]);
/** Well-known types whose JSON form inside an Any is {"@type": ..., "value": <json>}. */
const SPECIAL_JSON = new Set([
  ...WRAPPERS,
  "google.protobuf.Duration",
  "google.protobuf.Timestamp",
  "google.protobuf.Struct",
  "google.protobuf.Value",
  "google.protobuf.ListValue",
  "google.protobuf.FieldMask",
  "google.protobuf.Any",
]);

const fullName = (t: protobuf.ReflectionObject) => t.fullName.replace(/^\./, "");

function isSyntheticOneof(o: protobuf.OneOf): boolean {
  return o.fieldsArray.length === 1 && (o.name.startsWith("_") || Boolean(o.fieldsArray[0]!.options?.proto3_optional));
}

function mergeDeep(a: Obj, b: Obj): Obj {
  const out: Obj = { ...a };
  for (const [k, v] of Object.entries(b)) out[k] = isObj(out[k]) && isObj(v) ? mergeDeep(out[k] as Obj, v) : v;
  return out;
}

/** Structured `(validate.rules)` of a field (protobufjs keeps aggregate options in parsedOptions). */
export function fieldRules(f: protobuf.Field): Obj | undefined {
  let rules: Obj | undefined;
  for (const opt of (f.parsedOptions ?? []) as Obj[]) {
    const r = opt?.["(validate.rules)"];
    if (isObj(r)) rules = mergeDeep(rules ?? {}, r);
  }
  return rules;
}

const DURATION_RE = /^(-)?(\d+)(?:\.(\d{1,9}))?s$/;

function parseDuration(s: string): { seconds: number; nanos: number } | undefined {
  const m = DURATION_RE.exec(s);
  if (!m) return undefined;
  const sign = m[1] ? -1 : 1;
  const seconds = Number(m[2]);
  const nanos = m[3] ? Number(m[3].padEnd(9, "0")) : 0;
  if (seconds > 315576000000) return undefined;
  return { seconds: sign * seconds, nanos: sign * nanos };
}

/** Seconds of a Duration given in JSON form ("1.5s") or message form ({seconds, nanos}). */
function durationSeconds(v: unknown): number | undefined {
  if (typeof v === "string") {
    const d = parseDuration(v);
    return d ? d.seconds + d.nanos / 1e9 : undefined;
  }
  if (isObj(v)) return Number(v.seconds ?? 0) + Number(v.nanos ?? 0) / 1e9;
  return undefined;
}

const INT_RANGES: Record<string, [bigint, bigint]> = {
  int32: [-(2n ** 31n), 2n ** 31n - 1n],
  sint32: [-(2n ** 31n), 2n ** 31n - 1n],
  sfixed32: [-(2n ** 31n), 2n ** 31n - 1n],
  uint32: [0n, 2n ** 32n - 1n],
  fixed32: [0n, 2n ** 32n - 1n],
  int64: [-(2n ** 63n), 2n ** 63n - 1n],
  sint64: [-(2n ** 63n), 2n ** 63n - 1n],
  sfixed64: [-(2n ** 63n), 2n ** 63n - 1n],
  uint64: [0n, 2n ** 64n - 1n],
  fixed64: [0n, 2n ** 64n - 1n],
};

// ---------------------------------------------------------------------------------------------
// Schema walk + conversion

interface Converted {
  norm: unknown; // canonical JSON (snake_case keys, @type kept)
  pb: unknown; // protobufjs fromObject input (WKTs expanded, Anys packed)
}

type Mode = "json" | "option";

class Walker {
  readonly issues: string[] = [];
  readonly facts = new Map<string, Fact[]>();
  constructor(
    readonly protos: EnvoyProtos,
    readonly mode: Mode,
  ) {}

  issue(p: string, msg: string) {
    this.issues.push(`${p || "<root>"}: ${msg}`);
  }

  message(type: protobuf.Type, value: unknown, p: string): Converted | undefined {
    const name = fullName(type);
    if (this.mode === "json") {
      const special = this.wellKnown(name, type, value, p);
      if (special !== null) return special;
    }
    if (!isObj(value)) {
      this.issue(p, `expected an object for ${name}, got ${describe(value)}`);
      return undefined;
    }
    const norm: Obj = {};
    const pb: Obj = {};
    const seen = new Map<string, string>();
    for (const [key, raw] of Object.entries(value)) {
      const field = type.fields[key] ?? type.fieldsArray.find((f) => protobuf.util.camelCase(f.name) === key);
      if (!field) {
        const hint = nearest(key, type.fieldsArray.map((f) => f.name));
        this.issue(p, `unknown field "${key}" in ${name}${hint ? ` (did you mean "${hint}"?)` : ""}`);
        continue;
      }
      if (seen.has(field.name)) {
        this.issue(p, `field "${field.name}" given twice (as "${seen.get(field.name)}" and "${key}")`);
        continue;
      }
      seen.set(field.name, key);
      if (raw === null && !(field.resolvedType && fullName(field.resolvedType) === "google.protobuf.Value")) continue; // null = unset
      const fp = p ? `${p}.${field.name}` : field.name;
      if (this.mode === "json" && field.options?.deprecated) {
        this.issue(fp, `field ${name}.${field.name} is deprecated`);
      }
      const c = this.field(field, raw, fp);
      if (c) {
        norm[field.name] = c.norm;
        pb[field.name] = c.pb;
      }
    }
    for (const oneof of type.oneofsArray) {
      if (isSyntheticOneof(oneof)) continue;
      const set = oneof.fieldsArray.filter((f) => f.name in norm).map((f) => f.name);
      if (set.length > 1) this.issue(p, `oneof ${name}.${oneof.name} has more than one member set: ${set.join(", ")}`);
      if (this.mode === "json" && set.length === 0 && oneof.options?.["(validate.required)"]) {
        this.issue(p, `one of ${oneof.fieldsArray.map((f) => f.name).join(" | ")} is required in ${name}`);
      }
    }
    if (this.mode === "json") {
      this.checkRules(type, norm, p);
      let list = this.facts.get(name);
      if (!list) this.facts.set(name, (list = []));
      list.push({ path: p, value: norm });
      if (TYPED_STRUCTS.has(name)) this.typedStruct(norm, p);
    }
    return { norm, pb };
  }

  field(field: protobuf.Field, raw: unknown, p: string): Converted | undefined {
    if (field instanceof protobuf.MapField) {
      if (!isObj(raw)) {
        this.issue(p, `expected an object (map<${field.keyType}, ${field.type}>), got ${describe(raw)}`);
        return undefined;
      }
      const norm: Obj = {};
      const pb: Obj = {};
      for (const [k, v] of Object.entries(raw)) {
        if (field.keyType !== "string" && this.scalar(field.keyType, k, `${p}[${k}]`) === undefined) continue;
        const c = this.single(field, v, `${p}[${show(k)}]`);
        if (c) {
          norm[k] = c.norm;
          pb[k] = c.pb;
        }
      }
      return { norm, pb };
    }
    if (field.repeated) {
      let items: unknown[];
      if (Array.isArray(raw)) items = raw;
      else if (this.mode === "option") items = [raw];
      else {
        this.issue(p, `expected a list, got ${describe(raw)}`);
        return undefined;
      }
      const norm: unknown[] = [];
      const pb: unknown[] = [];
      items.forEach((v, i) => {
        const label = isObj(v) && typeof v.name === "string" ? `${i}:${v.name}` : String(i);
        const c = this.single(field, v, `${p}[${label}]`);
        if (c) {
          norm.push(c.norm);
          pb.push(c.pb);
        }
      });
      return { norm, pb };
    }
    return this.single(field, raw, p);
  }

  single(field: protobuf.Field, raw: unknown, p: string): Converted | undefined {
    const rt = field.resolvedType;
    if (rt instanceof protobuf.Type) return this.message(rt, raw, p);
    if (rt instanceof protobuf.Enum) return this.enumValue(rt, raw, p);
    const v = this.scalar(field.type, raw, p);
    return v === undefined ? undefined : { norm: raw, pb: v };
  }

  enumValue(e: protobuf.Enum, raw: unknown, p: string): Converted | undefined {
    const name = fullName(e);
    let key: string | undefined;
    if (typeof raw === "string") {
      if (!(raw in e.values)) {
        this.issue(p, `unknown value ${show(raw)} for enum ${name} (one of ${Object.keys(e.values).join(", ")})`);
        return undefined;
      }
      key = raw;
    } else if (typeof raw === "number" && Number.isInteger(raw)) {
      key = e.valuesById[raw];
      if (key === undefined) {
        // Open enums accept unknown numbers in a parse; (validate.rules).enum.defined_only catches them.
        return { norm: raw, pb: raw };
      }
    } else {
      this.issue(p, `expected an enum ${name} name, got ${describe(raw)}`);
      return undefined;
    }
    if (this.mode === "json" && (e.valuesOptions?.[key] as Obj | undefined)?.deprecated) {
      this.issue(p, `enum value ${name}.${key} is deprecated`);
    }
    return { norm: raw, pb: key };
  }

  scalar(type: string, raw: unknown, p: string): unknown {
    const bad = (what: string) => {
      this.issue(p, `expected ${what} (${type}), got ${describe(raw)} ${show(raw)}`);
      return undefined;
    };
    switch (type) {
      case "string":
        return typeof raw === "string" ? raw : bad("a string");
      case "bytes":
        return typeof raw === "string" && /^[A-Za-z0-9+/_-]*={0,2}$/.test(raw) ? raw : bad("base64 bytes");
      case "bool":
        return typeof raw === "boolean" ? raw : bad("a boolean");
      case "double":
      case "float":
        if (typeof raw === "number") return raw;
        if (typeof raw === "string" && (/^(NaN|-?Infinity)$/.test(raw) || (raw.trim() !== "" && Number.isFinite(Number(raw)))))
          return Number(raw);
        return bad("a number");
      default: {
        const range = INT_RANGES[type];
        if (!range) return bad(`a known scalar`);
        let n: bigint;
        if (typeof raw === "number" && Number.isInteger(raw)) n = BigInt(raw);
        else if (typeof raw === "string" && /^-?\d+$/.test(raw)) n = BigInt(raw);
        else return bad("an integer");
        if (n < range[0] || n > range[1]) return bad(`an integer in [${range[0]}, ${range[1]}]`);
        return type.endsWith("64") ? n.toString() : Number(n);
      }
    }
  }

  /** JSON mappings of well-known types. Returns null when `name` is an ordinary message. */
  wellKnown(name: string, type: protobuf.Type, value: unknown, p: string): Converted | undefined | null {
    if (WRAPPERS.has(name)) {
      const inner = type.fields.value!;
      const v = this.scalar(inner.type, value, p);
      return v === undefined ? undefined : { norm: value, pb: { value: v } };
    }
    switch (name) {
      case "google.protobuf.Duration": {
        const d = typeof value === "string" ? parseDuration(value) : undefined;
        if (!d) {
          this.issue(p, `expected a duration like "5s" or "0.250s", got ${show(value)}`);
          return undefined;
        }
        return { norm: value, pb: d };
      }
      case "google.protobuf.Timestamp": {
        const ms = typeof value === "string" ? Date.parse(value) : NaN;
        if (!Number.isFinite(ms)) {
          this.issue(p, `expected an RFC 3339 timestamp, got ${show(value)}`);
          return undefined;
        }
        return { norm: value, pb: { seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1e6 } };
      }
      case "google.protobuf.FieldMask":
        if (typeof value !== "string") {
          this.issue(p, `expected a field mask string, got ${describe(value)}`);
          return undefined;
        }
        return { norm: value, pb: { paths: value === "" ? [] : value.split(",") } };
      case "google.protobuf.Empty":
        if (!isObj(value) || Object.keys(value).length > 0) {
          this.issue(p, `expected {} for google.protobuf.Empty, got ${show(value)}`);
          return undefined;
        }
        return { norm: {}, pb: {} };
      case "google.protobuf.Struct":
        if (!isObj(value)) {
          this.issue(p, `expected an object (Struct), got ${describe(value)}`);
          return undefined;
        }
        return { norm: value, pb: structPb(value) };
      case "google.protobuf.ListValue":
        if (!Array.isArray(value)) {
          this.issue(p, `expected a list (ListValue), got ${describe(value)}`);
          return undefined;
        }
        return { norm: value, pb: { values: value.map(valuePb) } };
      case "google.protobuf.Value":
        return { norm: value, pb: valuePb(value) };
      case "google.protobuf.Any":
        return this.any(value, p);
      default:
        return null;
    }
  }

  any(value: unknown, p: string): Converted | undefined {
    if (!isObj(value) || typeof value["@type"] !== "string") {
      this.issue(p, `expected an Any object with a string "@type", got ${show(value)}`);
      return undefined;
    }
    const url = value["@type"];
    const typeName = url.slice(url.lastIndexOf("/") + 1);
    if (!url.includes("/") || !typeName) {
      this.issue(p, `malformed @type ${show(url)} (want type.googleapis.com/<full.message.Name>)`);
      return undefined;
    }
    const inner = this.protos.resolveType(typeName);
    if (!inner) {
      this.issue(p, `unknown @type ${show(url)}: no such message in the Envoy API protos`);
      return undefined;
    }
    const { "@type": _t, ...rest } = value;
    const ip = `${p}<${typeName.slice(typeName.lastIndexOf(".") + 1)}>`;
    let c: Converted | undefined;
    if (SPECIAL_JSON.has(typeName)) {
      const extra = Object.keys(rest).filter((k) => k !== "value");
      if (extra.length) this.issue(ip, `unknown field(s) ${extra.join(", ")} in Any of ${typeName} (only "value")`);
      c = this.message(inner, rest.value, ip);
    } else {
      c = this.message(inner, rest, ip);
    }
    if (!c) return undefined;
    let bytes: Uint8Array;
    try {
      const msg = inner.fromObject(c.pb as Obj);
      const err = inner.verify(msg);
      if (err) this.issue(ip, `does not verify as ${typeName}: ${err}`);
      bytes = inner.encode(msg).finish();
    } catch (e) {
      this.issue(ip, `cannot encode as ${typeName}: ${(e as Error).message}`);
      return undefined;
    }
    const norm = SPECIAL_JSON.has(typeName) ? { "@type": url, value: c.norm } : { "@type": url, ...(c.norm as Obj) };
    return { norm, pb: { type_url: url, value: bytes } };
  }

  /** xds/udpa TypedStruct carries an extension config as a Struct: check it against its type. */
  typedStruct(norm: Obj, p: string) {
    const url = norm.type_url;
    if (typeof url !== "string") return;
    const typeName = url.slice(url.lastIndexOf("/") + 1);
    const inner = this.protos.resolveType(typeName);
    if (!inner) this.issue(p, `unknown type_url ${show(url)} in TypedStruct`);
    else this.message(inner, norm.value ?? {}, `${p}<${typeName.slice(typeName.lastIndexOf(".") + 1)}>`);
  }

  // ---- protoc-gen-validate subset -----------------------------------------------------------

  checkRules(type: protobuf.Type, norm: Obj, p: string) {
    for (const f of type.fieldsArray) {
      const rules = fieldRules(f);
      if (!rules) continue;
      const present = f.name in norm;
      if (!present && f.partOf) continue; // only the set member of a oneof is validated
      const fp = p ? `${p}.${f.name}` : f.name;
      const v = norm[f.name];
      if (f instanceof protobuf.MapField) {
        const m = (present ? v : {}) as Obj;
        const r = rules.map as Obj | undefined;
        if (!r) continue;
        const n = Object.keys(m).length;
        if (r.ignore_empty && n === 0) continue;
        if (r.min_pairs !== undefined && n < Number(r.min_pairs)) this.issue(fp, `needs at least ${r.min_pairs} entries`);
        if (r.max_pairs !== undefined && n > Number(r.max_pairs)) this.issue(fp, `allows at most ${r.max_pairs} entries`);
        for (const [k, val] of Object.entries(m)) {
          if (isObj(r.keys)) this.scalarRules(r.keys, k, `${fp} key ${show(k)}`);
          if (isObj(r.values)) this.singleRules(f, r.values, val, `${fp}[${show(k)}]`);
        }
      } else if (f.repeated) {
        const list = (present ? v : []) as unknown[];
        const r = rules.repeated as Obj | undefined;
        if (!r) continue;
        if (r.ignore_empty && list.length === 0) continue;
        if (r.min_items !== undefined && list.length < Number(r.min_items)) this.issue(fp, `needs at least ${r.min_items} item(s)`);
        if (r.max_items !== undefined && list.length > Number(r.max_items)) this.issue(fp, `allows at most ${r.max_items} item(s)`);
        if (r.unique && new Set(list.map((x) => show(x))).size !== list.length) this.issue(fp, `items must be unique`);
        if (isObj(r.items)) list.forEach((x, i) => this.singleRules(f, r.items as Obj, x, `${fp}[${i}]`));
      } else {
        this.singleRules(f, rules, present ? v : undefined, fp);
      }
    }
  }

  singleRules(f: protobuf.Field, rules: Obj, v: unknown, p: string) {
    const rt = f.resolvedType;
    if (rt instanceof protobuf.Type) {
      const name = fullName(rt);
      const required = (rules.message as Obj | undefined)?.required || (rules.duration as Obj | undefined)?.required || (rules.any as Obj | undefined)?.required || (rules.timestamp as Obj | undefined)?.required;
      if (v === undefined) {
        if (required) this.issue(p, `is required`);
        return;
      }
      if (name === "google.protobuf.Duration" && isObj(rules.duration)) {
        const s = durationSeconds(v);
        if (s !== undefined) this.bounds(rules.duration, s, p, (b) => durationSeconds(b), "s");
      } else if (name === "google.protobuf.Any" && isObj(rules.any) && isObj(v)) {
        const url = v["@type"];
        const inList = rules.any.in === undefined ? undefined : ([] as unknown[]).concat(rules.any.in);
        const notIn = rules.any.not_in === undefined ? [] : ([] as unknown[]).concat(rules.any.not_in);
        if (inList && !inList.includes(url)) this.issue(p, `@type must be one of ${inList.join(", ")}`);
        if (notIn.includes(url)) this.issue(p, `@type ${show(url)} is not allowed here`);
      } else if (WRAPPERS.has(name)) {
        this.scalarRules(rules, v, p);
      }
      return;
    }
    if (rt instanceof protobuf.Enum) {
      const r = rules.enum as Obj | undefined;
      if (!r) return;
      const n = v === undefined ? 0 : typeof v === "number" ? v : rt.values[v as string];
      if (r.defined_only && (n === undefined || rt.valuesById[n] === undefined)) this.issue(p, `enum value ${show(v)} is not defined`);
      if (r.const !== undefined && n !== Number(r.const)) this.issue(p, `must be ${r.const}`);
      if (r.in !== undefined && !([] as unknown[]).concat(r.in).map(Number).includes(n as number)) this.issue(p, `must be one of ${show(r.in)}`);
      if (r.not_in !== undefined && ([] as unknown[]).concat(r.not_in).map(Number).includes(n as number))
        this.issue(p, `${show(v ?? rt.valuesById[0])} is not allowed here`);
      return;
    }
    const dflt = f.type === "string" || f.type === "bytes" ? "" : f.type === "bool" ? false : 0;
    this.scalarRules(rules, v === undefined ? dflt : v, p);
  }

  scalarRules(rules: Obj, v: unknown, p: string) {
    for (const [kind, r] of Object.entries(rules)) {
      if (!isObj(r)) continue;
      if (kind === "string" && typeof v === "string") this.stringRules(r, v, p);
      else if (kind === "bytes" && typeof v === "string") {
        const n = Buffer.from(v, "base64").length;
        if (r.min_len !== undefined && n < Number(r.min_len)) this.issue(p, `needs at least ${r.min_len} bytes`);
        if (r.max_len !== undefined && n > Number(r.max_len)) this.issue(p, `allows at most ${r.max_len} bytes`);
      } else if (kind in INT_RANGES || kind === "double" || kind === "float") {
        const n = Number(v);
        if (r.ignore_empty && n === 0) continue;
        if (!Number.isNaN(n)) this.bounds(r, n, p, (b) => Number(b), "");
      } else if (kind === "bool" && r.const !== undefined && v !== r.const) this.issue(p, `must be ${r.const}`);
    }
  }

  stringRules(r: Obj, s: string, p: string) {
    if (r.ignore_empty && s === "") return;
    const chars = [...s].length;
    const bytes = Buffer.byteLength(s);
    const num = (k: string) => (r[k] === undefined ? undefined : Number(r[k]));
    if (num("min_len") !== undefined && chars < num("min_len")!) this.issue(p, s === "" ? `must not be empty` : `needs at least ${r.min_len} characters`);
    if (num("max_len") !== undefined && chars > num("max_len")!) this.issue(p, `allows at most ${r.max_len} characters`);
    if (num("len") !== undefined && chars !== num("len")) this.issue(p, `must be exactly ${r.len} characters`);
    if (num("min_bytes") !== undefined && bytes < num("min_bytes")!) this.issue(p, s === "" ? `must not be empty` : `needs at least ${r.min_bytes} bytes`);
    if (num("max_bytes") !== undefined && bytes > num("max_bytes")!) this.issue(p, `allows at most ${r.max_bytes} bytes`);
    if (typeof r.prefix === "string" && !s.startsWith(r.prefix)) this.issue(p, `must start with ${show(r.prefix)}`);
    if (typeof r.suffix === "string" && !s.endsWith(r.suffix)) this.issue(p, `must end with ${show(r.suffix)}`);
    if (typeof r.contains === "string" && !s.includes(r.contains)) this.issue(p, `must contain ${show(r.contains)}`);
    if (r.const !== undefined && s !== r.const) this.issue(p, `must be ${show(r.const)}`);
    if (r.in !== undefined && !([] as unknown[]).concat(r.in).includes(s)) this.issue(p, `must be one of ${show(r.in)}`);
    if (r.not_in !== undefined && ([] as unknown[]).concat(r.not_in).includes(s)) this.issue(p, `${show(s)} is not allowed`);
    if (typeof r.pattern === "string") {
      let re: RegExp | undefined;
      try {
        re = new RegExp(r.pattern, "u");
      } catch {
        re = undefined; // RE2 syntax JavaScript lacks: not checked
      }
      if (re && !re.test(s)) this.issue(p, `${show(s)} does not match ${r.pattern}`);
    }
    const strict = r.strict !== false;
    switch (r.well_known_regex) {
      case "HTTP_HEADER_NAME":
        if (strict ? !/^:?[0-9a-zA-Z!#$%&'*+\-.^_|~`]+$/.test(s) : /[\0\r\n]/.test(s)) this.issue(p, `${show(s)} is not a valid HTTP header name`);
        break;
      case "HTTP_HEADER_VALUE":
        if (strict ? /[\0-\x08\x0A-\x1F\x7F]/.test(s) : /[\0\r\n]/.test(s)) this.issue(p, `${show(s)} is not a valid HTTP header value`);
        break;
    }
    if (r.ip && !net.isIP(s)) this.issue(p, `${show(s)} is not an IP address`);
    if (r.ipv4 && !net.isIPv4(s)) this.issue(p, `${show(s)} is not an IPv4 address`);
    if (r.ipv6 && !net.isIPv6(s)) this.issue(p, `${show(s)} is not an IPv6 address`);
    if (r.uri) {
      try {
        new URL(s);
      } catch {
        this.issue(p, `${show(s)} is not an absolute URI`);
      }
    }
  }

  bounds(r: Obj, n: number, p: string, conv: (b: unknown) => number | undefined, unit: string) {
    const b = (k: string) => (r[k] === undefined ? undefined : conv(r[k]));
    const [gt, gte, lt, lte, c] = [b("gt"), b("gte"), b("lt"), b("lte"), b("const")];
    const lower = gt !== undefined ? n > gt : gte !== undefined ? n >= gte : true;
    const upper = lt !== undefined ? n < lt : lte !== undefined ? n <= lte : true;
    const lo = gt ?? gte;
    const hi = lt ?? lte;
    // protoc-gen-validate: a lower bound above the upper bound means "outside the range".
    const ok = lo !== undefined && hi !== undefined && hi < lo ? lower || upper : lower && upper;
    if (!ok) {
      const parts = [
        gt !== undefined && `> ${gt}${unit}`,
        gte !== undefined && `>= ${gte}${unit}`,
        lt !== undefined && `< ${lt}${unit}`,
        lte !== undefined && `<= ${lte}${unit}`,
      ].filter(Boolean);
      this.issue(p, `${n}${unit} out of range (${parts.join(", ")})`);
    }
    if (c !== undefined && n !== c) this.issue(p, `must be ${c}${unit}`);
    const list = (k: string) => (r[k] === undefined ? undefined : ([] as unknown[]).concat(r[k]).map(conv));
    const inList = list("in");
    if (inList && !inList.includes(n)) this.issue(p, `must be one of ${inList.join(", ")}`);
    if (list("not_in")?.includes(n)) this.issue(p, `${n} is not allowed`);
  }
}

function valuePb(v: unknown): Obj {
  if (v === null || v === undefined) return { null_value: 0 };
  if (typeof v === "number") return { number_value: v };
  if (typeof v === "string") return { string_value: v };
  if (typeof v === "boolean") return { bool_value: v };
  if (Array.isArray(v)) return { list_value: { values: v.map(valuePb) } };
  return { struct_value: structPb(v as Obj) };
}

function structPb(o: Obj): Obj {
  return { fields: Object.fromEntries(Object.entries(o).map(([k, v]) => [k, valuePb(v)])) };
}

function nearest(word: string, candidates: string[]): string | undefined {
  let best: string | undefined;
  let bestD = Infinity;
  for (const c of candidates) {
    const d = levenshtein(word.toLowerCase(), c.toLowerCase());
    if (d < bestD) [best, bestD] = [c, d];
  }
  return bestD <= Math.max(2, Math.floor(word.length / 4)) ? best : undefined;
}

function levenshtein(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) cur[j] = Math.min(prev[j]! + 1, cur[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    prev = cur;
  }
  return prev[b.length]!;
}

// ---------------------------------------------------------------------------------------------
// Cross-reference integrity (what Envoy checks when it builds the server from the bootstrap)

const T = {
  routeAction: "envoy.config.route.v3.RouteAction",
  clusterWeight: "envoy.config.route.v3.WeightedCluster.ClusterWeight",
  mirror: "envoy.config.route.v3.RouteAction.RequestMirrorPolicy",
  httpUri: "envoy.config.core.v3.HttpUri",
  envoyGrpc: "envoy.config.core.v3.GrpcService.EnvoyGrpc",
  hcm: "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
  router: "envoy.extensions.filters.http.router.v3.Router",
  jwtAuthn: "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
  jwtRequirement: "envoy.extensions.filters.http.jwt_authn.v3.JwtRequirement",
  providerWithAudiences: "envoy.extensions.filters.http.jwt_authn.v3.ProviderWithAudiences",
  requirementRule: "envoy.extensions.filters.http.jwt_authn.v3.RequirementRule",
  cluster: "envoy.config.cluster.v3.Cluster",
} as const;

const typeOf = (any: unknown) => (isObj(any) && typeof any["@type"] === "string" ? any["@type"].replace(/^.*\//, "") : undefined);

function integrityIssues(cfg: Obj, facts: Map<string, Fact[]>): string[] {
  const issues: string[] = [];
  const facts_ = (t: string) => facts.get(t) ?? [];
  const sr = (cfg.static_resources ?? {}) as Obj;
  const clusters = (sr.clusters ?? []) as Obj[];
  const listeners = (sr.listeners ?? []) as Obj[];

  const dupes = (names: unknown[]) => names.filter((n, i) => names.indexOf(n) !== i);
  for (const d of dupes(clusters.map((c) => c.name))) issues.push(`static_resources.clusters: duplicate cluster name ${show(d)}`);
  for (const d of dupes(listeners.map((l) => l.name))) issues.push(`static_resources.listeners: duplicate listener name ${show(d)}`);
  for (const d of dupes(listeners.map((l) => show(l.address)))) issues.push(`static_resources.listeners: two listeners on ${d}`);

  // Cluster references. With CDS the target may arrive later, so only static configs are checked.
  const dynamicClusters = isObj(cfg.dynamic_resources) && "cds_config" in cfg.dynamic_resources;
  if (!dynamicClusters) {
    const known = new Set(clusters.map((c) => c.name));
    const ref = (p: string, name: unknown, what: string) => {
      if (typeof name === "string" && !known.has(name)) issues.push(`${p}: ${what} references unknown cluster ${show(name)}`);
    };
    for (const f of facts_(T.routeAction)) ref(f.path, f.value.cluster, "route");
    for (const f of facts_(T.clusterWeight)) ref(f.path, f.value.name, "weighted route");
    for (const f of facts_(T.mirror)) ref(f.path, f.value.cluster, "request mirror");
    for (const f of facts_(T.httpUri)) ref(f.path, f.value.cluster, `HTTP fetch of ${show(f.value.uri)}`);
    for (const f of facts_(T.envoyGrpc)) ref(f.path, f.value.cluster_name, "gRPC service");
  }

  for (const f of facts_(T.hcm)) {
    const filters = (f.value.http_filters ?? []) as Obj[];
    if (filters.length === 0) issues.push(`${f.path}: http_filters is empty (needs envoy.filters.http.router last)`);
    const routers = filters.map((x, i) => [typeOf(x.typed_config), i] as const).filter(([t]) => t === T.router);
    if (filters.length && (routers.length !== 1 || routers[0]![1] !== filters.length - 1))
      issues.push(`${f.path}: the router filter must appear exactly once, as the last http filter`);
    for (const d of dupes(filters.map((x) => x.name))) issues.push(`${f.path}: duplicate http filter name ${show(d)}`);
    if (!f.value.route_config && !f.value.rds && !f.value.scoped_routes) issues.push(`${f.path}: no route_config / rds`);
  }

  for (const f of facts_(T.jwtAuthn)) {
    const providers = new Set(Object.keys((f.value.providers ?? {}) as Obj));
    const requirementMap = new Set(Object.keys((f.value.requirement_map ?? {}) as Obj));
    const inside = (x: Fact) => x.path.startsWith(f.path);
    for (const r of [...facts_(T.jwtRequirement), ...facts_(T.providerWithAudiences)].filter(inside)) {
      const name = r.value.provider_name;
      if (typeof name === "string" && !providers.has(name)) issues.push(`${r.path}: unknown jwt provider ${show(name)}`);
    }
    for (const r of facts_(T.requirementRule).filter(inside)) {
      const name = r.value.requirement_name;
      if (typeof name === "string" && !requirementMap.has(name)) issues.push(`${r.path}: unknown requirement_name ${show(name)}`);
    }
  }

  for (const f of facts_(T.cluster)) {
    const c = f.value;
    const grpcHc = ((c.health_checks ?? []) as Obj[]).some((h) => "grpc_health_check" in h);
    if (grpcHc && !clusterSpeaksHttp2(c)) issues.push(`${f.path}: grpc_health_check needs an HTTP/2 cluster (explicit http2_protocol_options)`);
    const lbConfigFor: Record<string, string> = { ring_hash_lb_config: "RING_HASH", maglev_lb_config: "MAGLEV", least_request_lb_config: "LEAST_REQUEST" };
    for (const [k, policy] of Object.entries(lbConfigFor)) {
      if (k in c && (c.lb_policy ?? "ROUND_ROBIN") !== policy) issues.push(`${f.path}: ${k} given but lb_policy is not ${policy}`);
    }
  }
  return issues;
}

/** Whether the cluster's upstream protocol is HTTP/2 (explicitly, per the upstreams HTTP options). */
export function clusterSpeaksHttp2(c: Obj): boolean {
  if (c.http2_protocol_options) return true; // deprecated form
  const opts = (c.typed_extension_protocol_options ?? {}) as Obj;
  return Object.values(opts).some((o) => {
    if (!isObj(o) || typeOf(o) !== "envoy.extensions.upstreams.http.v3.HttpProtocolOptions") return false;
    const e = o.explicit_http_config as Obj | undefined;
    return Boolean(e && "http2_protocol_options" in e);
  });
}

// ---------------------------------------------------------------------------------------------
// Entry points

export function validateEnvoyConfig(obj: unknown, protos = loadEnvoyProtos()): ValidationResult {
  const Bootstrap = protos.root.lookupType("envoy.config.bootstrap.v3.Bootstrap");
  const w = new Walker(protos, "json");
  const c = w.message(Bootstrap, obj, "");
  const result: ValidationResult = { issues: w.issues, facts: w.facts };
  if (!c) return result;
  result.config = c.norm as Obj;
  result.issues.push(...integrityIssues(result.config, w.facts));
  if (result.issues.length === 0) {
    try {
      const msg = Bootstrap.fromObject(c.pb as Obj);
      const err = Bootstrap.verify(msg);
      if (err) throw new Error(err);
      const bytes = Bootstrap.encode(msg).finish();
      result.bootstrap = Bootstrap.decode(bytes);
    } catch (e) {
      result.issues.push(`<root>: cannot build envoy.config.bootstrap.v3.Bootstrap: ${(e as Error).message}`);
    }
  }
  return result;
}

export function validateEnvoyYaml(text: string, protos = loadEnvoyProtos()): ValidationResult {
  const doc = parseDocument(text, { uniqueKeys: true, prettyErrors: false });
  const errs = [...doc.errors, ...doc.warnings];
  if (errs.length) return { issues: errs.map((e) => `yaml: ${e.message}`), facts: new Map() };
  return validateEnvoyConfig(doc.toJS({ maxAliasCount: 100 }), protos);
}

/**
 * Checks every `(validate.rules)` annotation on every loaded message against `validate.FieldRules`
 * as loaded (i.e. the patched validate.proto). A non-empty result means validate.proto is older
 * than the envoy-api snapshot in ways the patch does not cover.
 */
export function validateRulesSchemaIssues(protos = loadEnvoyProtos()): string[] {
  const FieldRules = protos.root.lookupType("validate.FieldRules");
  const w = new Walker(protos, "option");
  const visit = (ns: protobuf.ReflectionObject) => {
    if (ns instanceof protobuf.Type) {
      for (const f of ns.fieldsArray) {
        const rules = fieldRules(f);
        if (rules) w.message(FieldRules, rules, `${fullName(ns)}.${f.name} (validate.rules)`);
      }
    }
    if (ns instanceof protobuf.Namespace) for (const child of ns.nestedArray) visit(child);
  };
  visit(protos.root);
  return w.issues;
}

function main(argv: string[]): number {
  const file = argv[0] ?? path.join(path.dirname(fileURLToPath(import.meta.url)), "envoy.yaml");
  const r = validateEnvoyYaml(fs.readFileSync(file, "utf8"));
  if (r.issues.length) {
    for (const i of r.issues) console.error(`${file}: ${i}`);
    return 1;
  }
  console.log(`${file}: OK (${(r.config?.static_resources as Obj | undefined)?.clusters ? "bootstrap valid" : "valid"})`);
  return 0;
}

if (process.argv[1] && import.meta.url === pathToFileURL(path.resolve(process.argv[1])).href) {
  process.exitCode = main(process.argv.slice(2));
}
