/**
 * What checking every value for NaN and ±Inf costs while loading: `decodeSafetensors` on the largest committed
 * checkpoint (the tiny GPT-2, 496 KB) with the check and without it (`allowNonFinite`), against a whole
 * `loadPretrained` of that folder; three rounds, printed as the check's share of a load.
 *
 *     deno run --allow-read --allow-env --allow-ffi bench/value_check.ts
 *
 * @module
 */
import { initBackend, loadPretrained } from "../lib/mod.ts";
import { decodeSafetensors } from "../lib/safetensors.ts";

await initBackend();
const dir = new URL("../data/fixtures/hf/tiny-gpt2", import.meta.url).pathname;
const bytes = await Deno.readFile(`${dir}/model.safetensors`);
const mean = (f: () => unknown, n: number) => {
  const start = performance.now();
  for (let i = 0; i < n; i++) f();
  return (performance.now() - start) / n;
};
for (let round = 1; round <= 3; round++) {
  const checked = mean(() => decodeSafetensors(bytes), 200);
  const unchecked = mean(() => decodeSafetensors(bytes, { allowNonFinite: true }), 200);
  const start = performance.now();
  for (let i = 0; i < 10; i++) (await loadPretrained(dir)).model.dispose();
  const load = (performance.now() - start) / 10;
  console.log(
    `round ${round}: decode ${checked.toFixed(3)} ms checked, ${unchecked.toFixed(3)} ms unchecked; loadPretrained ` +
      `${load.toFixed(1)} ms; the check is ${(100 * (checked - unchecked) / load).toFixed(2)}% of a load`,
  );
}
