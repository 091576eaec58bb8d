import { assert, assertEquals, assertThrows } from "./assert.ts";
import { decodeSafetensors, encodeSafetensors, MAX_HEADER_BYTES, type TensorData } from "../lib/safetensors.ts";

const FIXTURES = "data/fixtures";

/** A safetensors file from a header typed by hand and raw data bytes; `declared` overrides the length field. */
function rawFile(header: string, data: number[] | Uint8Array = [], declared?: bigint): Uint8Array {
  const json = new TextEncoder().encode(header);
  const bytes = new Uint8Array(8 + json.length + data.length);
  new DataView(bytes.buffer).setBigUint64(0, declared ?? BigInt(json.length), true);
  bytes.set(json, 8);
  bytes.set(data, 8 + json.length);
  return bytes;
}

const f32 = (n: number) => new Uint8Array(new Float32Array(n).buffer);

Deno.test("encode matches the hand-made fixture byte for byte, and decode reads it back", async () => {
  const fixture = await Deno.readFile(`${FIXTURES}/tiny-adapter/adapter_model.safetensors`);
  const tensors = new Map<string, TensorData>([
    // Given out of order on purpose: the writer sorts by name, as the reference writer does.
    ["base_model.model.layers.0.lora_B.weight", { shape: [2, 1], data: new Float32Array([2, 0.25]) }],
    ["base_model.model.layers.0.lora_A.weight", { shape: [1, 2], data: new Float32Array([0.5, -1]) }],
  ]);
  const metadata = { format: "pt", lora_scaling_convention: "tutorial", lora_alpha_as_given: "2" };
  assertEquals(encodeSafetensors(tensors, metadata), fixture);

  const decoded = decodeSafetensors(fixture);
  assertEquals(decoded.metadata, metadata);
  assertEquals([...decoded.tensors.keys()], [
    "base_model.model.layers.0.lora_A.weight",
    "base_model.model.layers.0.lora_B.weight",
  ]);
  assertEquals(decoded.tensors.get("base_model.model.layers.0.lora_A.weight"), {
    dtype: "F32",
    shape: [1, 2],
    data: new Float32Array([0.5, -1]),
  });
});

Deno.test("the header is padded with spaces to a multiple of 8 bytes; no tensors gives '{}' and 6 spaces", () => {
  assertEquals([...encodeSafetensors(new Map())], [8, 0, 0, 0, 0, 0, 0, 0, 123, 125, 32, 32, 32, 32, 32, 32]);
  for (const name of ["a", "ab", "abc", "abcd", "abcde", "abcdef", "abcdefg", "abcdefgh"]) {
    const bytes = encodeSafetensors(new Map([[name, { shape: [1], data: new Float32Array([1]) }]]));
    const headerLength = Number(new DataView(bytes.buffer).getBigUint64(0, true));
    assertEquals(headerLength % 8, 0);
    assertEquals(bytes.length, 8 + headerLength + 4);
    assertEquals(decodeSafetensors(bytes).tensors.get(name)!.data, new Float32Array([1]));
  }
});

Deno.test("float32 values round-trip bit for bit, NaN, infinities, -0 and subnormals included", () => {
  const data = new Float32Array([Math.PI, -0, 0, Infinity, -Infinity, NaN, 1e-45, 3.4028234663852886e38, -1.5e-40]);
  const bytes = encodeSafetensors(new Map([["x", { shape: [3, 3], data }]]));
  const back = decodeSafetensors(bytes, { allowNonFinite: true }).tensors.get("x")!;
  assertEquals(back.shape, [3, 3]);
  assertEquals(new Uint32Array(back.data.buffer), new Uint32Array(data.buffer));
});

Deno.test("scalars and empty tensors are written and read", () => {
  const tensors = new Map<string, TensorData>([
    ["empty", { shape: [0, 4], data: new Float32Array(0) }],
    ["scalar", { shape: [], data: new Float32Array([7]) }],
  ]);
  const back = decodeSafetensors(encodeSafetensors(tensors)).tensors;
  assertEquals(back.get("scalar"), { dtype: "F32", shape: [], data: new Float32Array([7]) });
  assertEquals(back.get("empty"), { dtype: "F32", shape: [0, 4], data: new Float32Array(0) });
});

Deno.test("F16 and BF16 from the hand-made fixture become float32", async () => {
  const { tensors } = decodeSafetensors(await Deno.readFile(`${FIXTURES}/half-precision.safetensors`));
  assertEquals(tensors.get("bf16"), { dtype: "BF16", shape: [3], data: new Float32Array([1, -2, 3.140625]) });
  const f16 = tensors.get("f16")!;
  assertEquals([f16.dtype, f16.shape], ["F16", [2, 3]]);
  assertEquals([...f16.data], [1, -2, 0.5, 65504, 2 ** -24, -0]);
  assert.ok(Object.is(f16.data[5], -0), "F16 0x8000 is -0");
});

Deno.test("F16 infinities and NaN, read as stored with allowNonFinite", () => {
  const header = '{"h":{"dtype":"F16","shape":[3],"data_offsets":[0,6]}}';
  const file = rawFile(header, [0x00, 0x7c, 0x00, 0xfc, 0x01, 0x7c]);
  const { data } = decodeSafetensors(file, { allowNonFinite: true }).tensors.get("h")!;
  assertEquals(data[0], Infinity);
  assertEquals(data[1], -Infinity);
  assert.ok(Number.isNaN(data[2]));
});

Deno.test("a file whose bytes start at an odd offset in its buffer is read correctly", () => {
  const bytes = encodeSafetensors(new Map([["x", { shape: [2], data: new Float32Array([1.5, -2.5]) }]]));
  const shifted = new Uint8Array(bytes.length + 1);
  shifted.set(bytes, 1);
  assertEquals(decodeSafetensors(shifted.subarray(1)).tensors.get("x")!.data, new Float32Array([1.5, -2.5]));
  const raw = decodeSafetensors(shifted.subarray(1), { allowNonFinite: true }).tensors.get("x")!.data;
  assertEquals([raw, raw.buffer.byteLength], [new Float32Array([1.5, -2.5]), 8]);
});

Deno.test("malformed files: each problem is named", () => {
  const ok = '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}';
  const cases: [string, Uint8Array, new (...args: never[]) => Error, RegExp][] = [
    ["shorter than the length field", new Uint8Array(5), RangeError, /5 bytes; it must start with an 8-byte length/],
    ["header length past the end", rawFile(ok, f32(2), 1000n), RangeError, /header length 1000 runs past the end/],
    [
      "header over the size limit",
      rawFile(ok, f32(2), BigInt(MAX_HEADER_BYTES) + 1n),
      RangeError,
      /exceeds the limit of 100000000 bytes/,
    ],
    ["header length 2^64 - 1", rawFile(ok, f32(2), 2n ** 64n - 1n), RangeError, /exceeds the limit/],
    ["bad JSON", rawFile('{"a": {', f32(2)), SyntaxError, /not valid UTF-8 JSON/],
    ["bad UTF-8", rawFile("{}", []).fill(0xff, 8, 9), SyntaxError, /not valid UTF-8 JSON/],
    ["a JSON array", rawFile("[1, 2]"), SyntaxError, /must be a JSON object/],
    [
      "unknown dtype",
      rawFile('{"a":{"dtype":"Q4","shape":[2],"data_offsets":[0,1]}}', [0]),
      TypeError,
      /tensor "a" has dtype "Q4"; this reader supports F32, F16 and BF16/,
    ],
    [
      "a dtype this reader does not convert",
      rawFile('{"a":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}}', new Uint8Array(8)),
      TypeError,
      /dtype "I64"/,
    ],
    [
      "negative dimension",
      rawFile('{"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}', f32(2)),
      SyntaxError,
      /shape \[-2\]; expected an array of non-negative integers/,
    ],
    [
      "offsets reversed",
      rawFile('{"a":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}}', f32(2)),
      SyntaxError,
      /data_offsets \[8,0\]; expected \[begin, end\]/,
    ],
    [
      "offsets outside the file",
      rawFile('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', f32(1)),
      RangeError,
      /tensor "a" at bytes \[0, 8\) lies outside the 4-byte data/,
    ],
    [
      "shape disagrees with the byte range",
      rawFile('{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}', f32(2)),
      RangeError,
      /shape \[3\] in F32 needs 12 bytes; data_offsets give 8/,
    ],
    [
      "overlapping tensors",
      rawFile(
        '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}',
        f32(3),
      ),
      RangeError,
      /tensor "b" at bytes \[4, 12\) overlaps another/,
    ],
    [
      "a gap between tensors",
      rawFile(
        '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}',
        f32(3),
      ),
      RangeError,
      /bytes \[4, 8\) of the data belong to no tensor/,
    ],
    ["bytes left over at the end", rawFile(ok, f32(3)), RangeError, /the data has 12 bytes but the tensors cover 8/],
    [
      "metadata that is not strings",
      rawFile('{"__metadata__":{"n":1}}'),
      SyntaxError,
      /__metadata__ must be an object whose values are strings/,
    ],
    ["a tensor entry that is not an object", rawFile('{"a":5}'), SyntaxError, /tensor "a" must map to an object/],
  ];
  for (const [what, bytes, type, message] of cases) {
    try {
      assertThrows(() => decodeSafetensors(bytes), type, message);
    } catch (error) {
      throw new Error(`${what}: ${(error as Error).message}`);
    }
  }
});

Deno.test("encode refuses a shape that does not fit the values, and reserved names", () => {
  assertThrows(
    () => encodeSafetensors(new Map([["x", { shape: [2, 2], data: new Float32Array(3) }]])),
    RangeError,
    /tensor "x" has shape \[2, 2\] but 3 values/,
  );
  assertThrows(
    () => encodeSafetensors(new Map([["__metadata__", { shape: [1], data: new Float32Array(1) }]])),
    RangeError,
    /cannot name a tensor/,
  );
});

Deno.test("a NaN or infinity in F32, F16 or BF16 is refused, naming the file, tensor, flat index and index", () => {
  // Each dtype's bit patterns for +Inf, -Inf and a NaN, little-endian, placed at flat index 4 of a [2, 3] tensor.
  const patterns: Record<string, { width: number; bad: number[][] }> = {
    F32: { width: 4, bad: [[0, 0, 0x80, 0x7f], [0, 0, 0x80, 0xff], [1, 0, 0xc0, 0x7f]] },
    F16: { width: 2, bad: [[0x00, 0x7c], [0x00, 0xfc], [0x01, 0x7e]] },
    BF16: { width: 2, bad: [[0x80, 0x7f], [0x80, 0xff], [0xc1, 0x7f]] },
  };
  for (const [dtype, { width, bad }] of Object.entries(patterns)) {
    bad.forEach((pattern, k) => {
      const data = new Uint8Array(6 * width); // zeros: finite
      data.set(pattern, 4 * width);
      data.set(pattern, 5 * width); // a second bad value: the first is the one named
      const header = `{"ok":{"dtype":"${dtype}","shape":[1],"data_offsets":[0,${width}]},` +
        `"w":{"dtype":"${dtype}","shape":[2,3],"data_offsets":[${width},${7 * width}]}}`;
      const file = rawFile(header, [...new Uint8Array(width), ...data]);
      const shown = ["Infinity", "-Infinity", "NaN"][k];
      assertThrows(
        () => decodeSafetensors(file, { source: "model.safetensors" }),
        RangeError,
        new RegExp(
          `^safetensors \\(model\\.safetensors\\): tensor "w" holds ${shown} at flat index 4 ` +
            `\\(index \\[1, 1\\] of shape \\[2, 3\\], ${dtype}\\); weights must be finite`,
        ),
      );
      // Without a source the message starts with the module's name alone; with the opt-out the value comes back.
      assertThrows(() => decodeSafetensors(file), RangeError, /^safetensors: tensor "w" holds/);
      const raw = decodeSafetensors(file, { allowNonFinite: true }).tensors.get("w")!.data;
      assert.ok(!Number.isFinite(raw[4]) && !Number.isFinite(raw[5]) && raw[3] === 0, `${dtype} ${shown}`);
    });
  }
});

Deno.test("finite extremes pass the value check in every dtype", () => {
  const f32 = new Float32Array([3.4028234663852886e38, -3.4028234663852886e38, 1e-45, -0]);
  const back = decodeSafetensors(encodeSafetensors(new Map([["x", { shape: [4], data: f32 }]]))).tensors.get("x")!;
  assertEquals(back.data, f32);
  // F16 65504 (0x7bff) and BF16's largest finite value (0x7f7f) are finite.
  const header =
    '{"a":{"dtype":"F16","shape":[1],"data_offsets":[0,2]},"b":{"dtype":"BF16","shape":[1],"data_offsets":[2,4]}}';
  const { tensors } = decodeSafetensors(rawFile(header, [0xff, 0x7b, 0x7f, 0x7f]));
  assertEquals(tensors.get("a")!.data[0], 65504);
  assertEquals(tensors.get("b")!.data[0], 3.3895313892515355e38);
});

Deno.test("every F16 bit pattern converts as the reference formula says", () => {
  const data = new Uint8Array(2 * 65536);
  for (let h = 0; h < 65536; h++) [data[2 * h], data[2 * h + 1]] = [h & 0xff, h >> 8];
  const file = rawFile(`{"h":{"dtype":"F16","shape":[65536],"data_offsets":[0,${data.length}]}}`, data);
  const values = decodeSafetensors(file, { allowNonFinite: true }).tensors.get("h")!.data;
  for (const h of [0x0001, 0x03ff, 0x0400, 0x3c00, 0x3555, 0x7bff, 0x8001, 0xc000]) {
    const exponent = (h >> 10) & 0x1f, fraction = h & 0x3ff, sign = h & 0x8000 ? -1 : 1;
    const expected = exponent === 0 ? sign * fraction * 2 ** -24 : sign * (1 + fraction / 1024) * 2 ** (exponent - 15);
    assertEquals(values[h], Math.fround(expected), `0x${h.toString(16)}`);
  }
  assertEquals(values.filter((v) => !Number.isFinite(v)).length, 2 * 1024, "exponent 31: 2 × 1024 patterns");
});

Deno.test("errors name the source; decoded values never alias the caller's bytes", () => {
  assertThrows(
    () => decodeSafetensors(new Uint8Array(3), { source: "x.bin" }),
    RangeError,
    /^safetensors \(x\.bin\): the file has 3/,
  );
  assertThrows(
    () => decodeSafetensors([1, 2] as unknown as Uint8Array),
    TypeError,
    /expected the file's bytes as a Uint8Array; got an array/,
  );
  const bytes = encodeSafetensors(new Map([["x", { shape: [1], data: new Float32Array([1]) }]]));
  const data = decodeSafetensors(bytes).tensors.get("x")!.data;
  bytes.fill(0, bytes.length - 4);
  assertEquals(data[0], 1);
});
