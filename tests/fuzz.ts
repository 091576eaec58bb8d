/**
 * Seeded mutations of files, for tests that feed a loader many broken variants of a good input: byte flips,
 * truncations, header edits and injected NaNs for safetensors files, and edits of parsed JSON (configs). Each
 * helper takes the generator from `seededRandom`, so a run repeats; {@linkcode runFuzz} times each case.
 *
 * Also an independent reference reading of safetensors ({@linkcode referenceDecode}): value by value through a
 * `DataView`, the half-precision formula written out, so a test can tell what a mutated file should decode to.
 *
 * @module
 */
import { seededRandom } from "../lib/random.ts";

export { seededRandom };

/** One mutation: what was done, and the bytes it produced. */
export interface Mutation {
  /** A short description, e.g. `"flip byte 37 ^ 0x10"`, shown when a case fails. */
  what: string;
  /** The mutated bytes (a fresh copy; the input is never changed). */
  bytes: Uint8Array;
}

/** A whole number in `[0, n)`. */
export function randomInt(random: () => number, n: number): number {
  return Math.floor(random() * n);
}

/** One element of `items`, chosen by `random`. */
export function pick<T>(random: () => number, items: readonly T[]): T {
  return items[randomInt(random, items.length)];
}

/** The parts of a safetensors file: its header object, the header's byte length, and the data after it. */
export function splitSafetensors(bytes: Uint8Array): { header: Record<string, unknown>; data: Uint8Array } {
  const length = Number(new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + length)));
  return { header, data: bytes.subarray(8 + length) };
}

/** A safetensors file from a header object (or raw header text) and data bytes; `declared` overrides the length. */
export function joinSafetensors(header: unknown, data: Uint8Array, declared?: bigint): Uint8Array {
  const json = new TextEncoder().encode(typeof header === "string" ? header : JSON.stringify(header));
  const bytes = new Uint8Array(8 + json.length + data.length);
  new DataView(bytes.buffer).setBigUint64(0, declared ?? BigInt(json.length), true);
  bytes.set(json, 8);
  bytes.set(data, 8 + json.length);
  return bytes;
}

/** `count` random bytes XORed with a random non-zero mask. */
export function flipBytes(bytes: Uint8Array, random: () => number, count = 1): Mutation {
  const out = bytes.slice();
  const changes: string[] = [];
  for (let k = 0; k < count; k++) {
    const at = randomInt(random, out.length);
    const mask = 1 + randomInt(random, 255);
    out[at] ^= mask;
    changes.push(`${at} ^ 0x${mask.toString(16)}`);
  }
  return { what: `flip byte ${changes.join(", ")}`, bytes: out };
}

/** The file cut at a random length (possibly 0), or grown by random bytes. */
export function truncate(bytes: Uint8Array, random: () => number): Mutation {
  if (random() < 0.2) {
    const extra = Uint8Array.from({ length: 1 + randomInt(random, 8) }, () => randomInt(random, 256));
    const out = new Uint8Array(bytes.length + extra.length);
    out.set(bytes);
    out.set(extra, bytes.length);
    return { what: `append ${extra.length} bytes`, bytes: out };
  }
  const length = randomInt(random, bytes.length);
  return { what: `truncate to ${length} bytes`, bytes: bytes.slice(0, length) };
}

/** Values a hostile header might hold in place of a good one. */
const HOSTILE_VALUES: unknown[] = [
  null,
  -1,
  0,
  1.5,
  2 ** 53,
  1e300,
  "F32",
  "I64",
  "",
  [],
  [0],
  [-1, 4],
  [2 ** 40],
  {},
  true,
];

/** One edit of a safetensors header: a field of a tensor changed, a tensor removed or added, the length field lied. */
export function editHeader(bytes: Uint8Array, random: () => number): Mutation {
  const { header, data } = splitSafetensors(bytes);
  const names = Object.keys(header).filter((name) => name !== "__metadata__");
  const name = pick(random, names);
  const entry = { ...(header[name] as Record<string, unknown>) };
  const edit = randomInt(random, 9);
  let what: string;
  if (edit === 0) {
    entry.dtype = pick(random, ["F32", "F16", "BF16", "F64", "I8", "f32", 32]);
    what = `"${name}".dtype = ${JSON.stringify(entry.dtype)}`;
  } else if (edit === 1) {
    const shape = [...(entry.shape as number[])];
    if (shape.length > 0 && random() < 0.7) shape[randomInt(random, shape.length)] += pick(random, [-1, 1, 2]);
    else shape.push(pick(random, [1, 2, 0]));
    entry.shape = shape;
    what = `"${name}".shape = ${JSON.stringify(shape)}`;
  } else if (edit === 2) {
    const offsets = [...(entry.data_offsets as number[])];
    offsets[randomInt(random, 2)] += pick(random, [-4, -2, -1, 1, 2, 4]);
    entry.data_offsets = offsets;
    what = `"${name}".data_offsets = ${JSON.stringify(offsets)}`;
  } else if (edit === 3) {
    const key = pick(random, ["dtype", "shape", "data_offsets"]);
    entry[key] = pick(random, HOSTILE_VALUES);
    what = `"${name}".${key} = ${JSON.stringify(entry[key])}`;
  } else if (edit === 4) {
    delete header[name];
    what = `remove "${name}"`;
  } else if (edit === 5) {
    header[`${name}.copy`] = { ...entry };
    what = `duplicate "${name}"`;
  } else if (edit === 6) {
    header.__metadata__ = pick(random, [{ format: "pt" }, { n: 1 }, [], "pt", null, {}]);
    what = `__metadata__ = ${JSON.stringify(header.__metadata__)}`;
  } else if (edit === 7) {
    const json = JSON.stringify(header);
    const declared = BigInt(json.length) + BigInt(pick(random, [-9, -1, 1, 8, 2 ** 31, 2 ** 62]));
    return { what: `header length ${declared}`, bytes: joinSafetensors(json, data, declared < 0n ? 0n : declared) };
  } else {
    const json = JSON.stringify(header);
    const at = randomInt(random, json.length);
    const text = json.slice(0, at) + pick(random, ["", "}", "{", '"', ",", "\u0000", " "]) + json.slice(at + 1);
    return { what: `header text edited at ${at}`, bytes: joinSafetensors(text, data) };
  }
  if (edit !== 4) header[name] = entry;
  return { what, bytes: joinSafetensors(header, data) };
}

/** Bit patterns of NaN and ±Infinity, little-endian, in each dtype. */
const NON_FINITE: Record<string, number[][]> = {
  F32: [[0, 0, 0xc0, 0x7f], [0, 0, 0x80, 0x7f], [0, 0, 0x80, 0xff]],
  F16: [[0x00, 0x7e], [0x00, 0x7c], [0x00, 0xfc]],
  BF16: [[0xc0, 0x7f], [0x80, 0x7f], [0x80, 0xff]],
};

/** One value of one tensor replaced by NaN, +Infinity or −Infinity, in the tensor's own dtype. */
export function injectNonFinite(bytes: Uint8Array, random: () => number): Mutation {
  const { header } = splitSafetensors(bytes);
  const length = Number(new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(0, true));
  const names = Object.keys(header).filter((name) => {
    const entry = header[name] as { data_offsets?: number[] };
    return name !== "__metadata__" && entry.data_offsets![1] > entry.data_offsets![0];
  });
  const name = pick(random, names);
  const { dtype, data_offsets: [begin, end] } = header[name] as { dtype: string; data_offsets: number[] };
  const pattern = pick(random, NON_FINITE[dtype]);
  const index = randomInt(random, (end - begin) / pattern.length);
  const out = bytes.slice();
  out.set(pattern, 8 + length + begin + index * pattern.length);
  return { what: `"${name}"[${index}] = non-finite ${pattern}`, bytes: out };
}

/** One of the mutations above, chosen by `random`. */
export function mutateSafetensors(bytes: Uint8Array, random: () => number): Mutation {
  const kind = randomInt(random, 5);
  if (kind === 0) return flipBytes(bytes, random, 1);
  if (kind === 1) return flipBytes(bytes, random, 1 + randomInt(random, 4));
  if (kind === 2) return truncate(bytes, random);
  if (kind === 3) return editHeader(bytes, random);
  return injectNonFinite(bytes, random);
}

/**
 * One edit of a parsed JSON value (a config): a random path is chosen, and the value there is replaced by a
 * hostile one, deleted, or given a sibling key. Returns the edited copy and what was done.
 */
export function mutateJson(value: unknown, random: () => number): { what: string; value: unknown } {
  const copy = structuredClone(value);
  const paths: (string | number)[][] = [];
  const walk = (node: unknown, path: (string | number)[]) => {
    if (path.length > 0) paths.push(path);
    if (Array.isArray(node)) node.forEach((child, i) => walk(child, [...path, i]));
    else if (node !== null && typeof node === "object") {
      for (const [key, child] of Object.entries(node)) walk(child, [...path, key]);
    }
  };
  walk(copy, []);
  if (paths.length === 0) return { what: "replace the root", value: pick(random, HOSTILE_VALUES) };
  const path = pick(random, paths);
  const parent = path.slice(0, -1).reduce(
    (node: unknown, key) => (node as Record<string | number, unknown>)[key],
    copy,
  ) as Record<string | number, unknown>;
  const key = path.at(-1)!;
  const edit = randomInt(random, 4);
  if (edit === 0 && !Array.isArray(parent)) {
    delete parent[key];
    return { what: `delete ${path.join(".")}`, value: copy };
  }
  if (edit === 1 && !Array.isArray(parent)) {
    parent[`${key}_extra`] = pick(random, HOSTILE_VALUES);
    return { what: `add ${path.join(".")}_extra`, value: copy };
  }
  const replacement = pick(random, [...HOSTILE_VALUES, "(a+)+$", "a)", "^(?!x).*", -1e40, 1e40, "NaN"]);
  parent[key] = replacement;
  return { what: `${path.join(".")} = ${JSON.stringify(replacement)}`, value: copy };
}

/** A tensor as the reference reading gives it. */
export interface ReferenceTensor {
  dtype: string;
  shape: number[];
  data: Float32Array;
}

/**
 * The tensors a strict reader should get from `bytes`, or an `Error` saying why the file is invalid: the
 * safetensors rules (length field, JSON object header, F32/F16/BF16, integer shapes and offsets, exact tiling,
 * string metadata) and finite values, implemented apart from `lib/safetensors.ts` and deliberately plainly.
 */
export function referenceDecode(bytes: Uint8Array): Map<string, ReferenceTensor> | Error {
  try {
    if (bytes.length < 8) return new Error("short");
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const length = view.getBigUint64(0, true);
    if (length > 100_000_000n || 8n + length > BigInt(bytes.length)) return new Error("length");
    const n = Number(length);
    const header = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(8, 8 + n)));
    if (header === null || typeof header !== "object" || Array.isArray(header)) return new Error("header");
    const meta = header.__metadata__;
    if (meta !== undefined) {
      if (meta === null || typeof meta !== "object" || Array.isArray(meta)) return new Error("metadata");
      if (Object.values(meta).some((v) => typeof v !== "string")) return new Error("metadata");
    }
    const width: Record<string, number> = { F32: 4, F16: 2, BF16: 2 };
    const dataLength = bytes.length - 8 - n;
    const spans: [number, number][] = [];
    const out = new Map<string, ReferenceTensor>();
    for (const [name, entry] of Object.entries(header as Record<string, unknown>)) {
      if (name === "__metadata__") continue;
      if (entry === null || typeof entry !== "object" || Array.isArray(entry)) return new Error("entry");
      const { dtype, shape, data_offsets: offsets } = entry as Record<string, unknown>;
      if (typeof dtype !== "string" || !(dtype in width)) return new Error("dtype");
      const isSize = (x: unknown) => Number.isSafeInteger(x) && (x as number) >= 0;
      if (!Array.isArray(shape) || !shape.every(isSize)) return new Error("shape");
      if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isSize)) return new Error("offsets");
      const [begin, end] = offsets;
      if (begin > end || end > dataLength) return new Error("offsets");
      const count = shape.reduce((a: number, b: number) => a * b, 1);
      if (count * width[dtype] !== end - begin) return new Error("size");
      spans.push([begin, end]);
      const data = new Float32Array(count);
      for (let i = 0; i < count; i++) {
        const at = 8 + n + begin + i * width[dtype];
        let v: number;
        if (dtype === "F32") v = view.getFloat32(at, true);
        else if (dtype === "BF16") {
          v = new DataView(new Uint8Array([0, 0, bytes[at], bytes[at + 1]]).buffer).getFloat32(0, true);
        } else {
          const h = view.getUint16(at, true);
          const e = (h >> 10) & 31, f = h & 1023, s = h >> 15 ? -1 : 1;
          v = e === 0
            ? s * f * 2 ** -24
            : e === 31
            ? (f === 0 ? s * Infinity : NaN)
            : s * (1 + f / 1024) * 2 ** (e - 15);
        }
        if (!Number.isFinite(v)) return new Error("non-finite");
        data[i] = v;
      }
      out.set(name, { dtype, shape, data });
    }
    spans.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
    let covered = 0;
    for (const [begin, end] of spans) {
      if (begin !== covered) return new Error("tiling");
      covered = end;
    }
    if (covered !== dataLength) return new Error("tiling");
    return out;
  } catch (error) {
    return error as Error;
  }
}

/** What {@linkcode runFuzz} found: how many cases were accepted and refused, and the slowest case's time. */
export interface FuzzSummary {
  accepted: number;
  refused: number;
  slowestMs: number;
  slowest: string;
}

/**
 * Runs `count` cases: `mutate(random)` makes one, `check(mutation)` runs the code under test and throws (an
 * assertion) when its outcome is wrong, returning `"accepted"` or `"refused"`. A case that takes longer than
 * `boundMs`, or whose check throws, fails the run with the case's number and description.
 */
export function runFuzz(
  count: number,
  seed: number,
  mutate: (random: () => number) => Mutation,
  check: (mutation: Mutation) => "accepted" | "refused",
  boundMs: number,
): FuzzSummary {
  const random = seededRandom(seed);
  const summary: FuzzSummary = { accepted: 0, refused: 0, slowestMs: 0, slowest: "" };
  for (let k = 0; k < count; k++) {
    const mutation = mutate(random);
    const started = performance.now();
    let outcome: "accepted" | "refused";
    try {
      outcome = check(mutation);
    } catch (error) {
      throw new Error(`fuzz case ${k} (seed ${seed}), ${mutation.what}: ${(error as Error).message}`);
    }
    const ms = performance.now() - started;
    if (ms > boundMs) throw new Error(`fuzz case ${k} (seed ${seed}), ${mutation.what}: took ${ms.toFixed(1)} ms`);
    if (ms > summary.slowestMs) [summary.slowestMs, summary.slowest] = [ms, mutation.what];
    summary[outcome]++;
  }
  return summary;
}
