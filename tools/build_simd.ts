/**
 * `deno task build-simd`: assembles `lib/simd.wat` into `lib/simd_wasm.ts` (the module's bytes in base64), with
 * wabt's WebAssembly text assembler. `tests/simd_test.ts` assembles it again and checks the two agree, so the
 * committed bytes always come from the committed source.
 *
 * @module
 */
import wabtInit from "wabt";

/** The module's bytes, assembled from `wat`. */
export async function assemble(wat: string): Promise<Uint8Array> {
  const wabt = await wabtInit();
  const module = wabt.parseWat("simd.wat", wat, { simd: true, multi_value: true, bulk_memory: true });
  try {
    module.validate();
    return new Uint8Array(module.toBinary({}).buffer);
  } finally {
    module.destroy();
  }
}

/** The TypeScript file that carries `bytes`. */
export function render(bytes: Uint8Array): string {
  let binary = "";
  for (const byte of bytes) binary += String.fromCharCode(byte);
  const base64 = btoa(binary).replace(/.{1,100}/g, (line) => `  "${line}",\n`);
  return [
    "// Generated from simd.wat by `deno task build-simd` (tools/build_simd.ts); do not edit.",
    "",
    "/** The bytes of the WebAssembly module assembled from `simd.wat`, in base64. */",
    "export const SIMD_WASM_BASE64 = [",
    base64 + '].join("");',
    "",
  ].join("\n");
}

if (import.meta.main) {
  const source = new URL("../lib/simd.wat", import.meta.url);
  const target = new URL("../lib/simd_wasm.ts", import.meta.url);
  const bytes = await assemble(await Deno.readTextFile(source));
  await Deno.writeTextFile(target, render(bytes));
  console.log(`lib/simd_wasm.ts: ${bytes.length} bytes of WebAssembly`);
}
