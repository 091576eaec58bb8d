/**
 * The committed bytes of lib/simd_wasm.ts are what lib/simd.wat assembles to (tools/build_simd.ts), so the
 * vector loops that run are the ones a reader sees.
 */
import { assemble } from "../tools/build_simd.ts";
import { SIMD_WASM_BASE64 } from "../lib/simd_wasm.ts";
import { assertEquals } from "./assert.ts";

Deno.test("lib/simd_wasm.ts holds the module lib/simd.wat assembles to (deno task build-simd rebuilds it)", async () => {
  const bytes = await assemble(await Deno.readTextFile(new URL("../lib/simd.wat", import.meta.url)));
  const committed = Uint8Array.from(atob(SIMD_WASM_BASE64), (c) => c.charCodeAt(0));
  assertEquals(committed.length, bytes.length, "the same length");
  assertEquals(Array.from(committed), Array.from(bytes));
});
