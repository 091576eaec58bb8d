/**
 * Seeded fuzzing of adapter files (LoRA, DoRA, VeRA): random mutations of a good `adapter_model.safetensors`
 * and of a good `adapter_config.json`, each loaded into a fresh model. Every case must either load, with every
 * adapter value finite and the model's outputs finite, or throw an `Error`, leaving the model exactly as it
 * was; none may take longer than the bound, and nothing may leak.
 */
import * as tf from "@tensorflow/tfjs";
import {
  type AdapterFiles,
  adapterFromFiles,
  adapterToFiles,
  addLoRA,
  type AddLoRAOptions,
  initBackend,
  loraLayers,
  MultilayerPerceptron,
  namedParameters,
} from "../lib/mod.ts";
import { assert, assertEquals } from "./assert.ts";
import { mutateJson, mutateSafetensors, type Mutation, runFuzz } from "./fuzz.ts";

await initBackend();

const base = () => new MultilayerPerceptron(6, 5, 4, 3, { seed: 4 });

async function goodFiles(options: AddLoRAOptions): Promise<AdapterFiles> {
  const model = addLoRA(base(), { ...options, seed: 2 });
  for (const { name, variable } of namedParameters(model)) {
    if (/\.(B|lambda_b)$/.test(name)) {
      tf.tidy(() => variable.assign(tf.randomNormal(variable.shape, 0, 0.3, "float32", 3)));
    }
  }
  const files = await adapterToFiles(model);
  model.dispose();
  return files;
}

function snapshot(model: MultilayerPerceptron): string {
  return JSON.stringify(namedParameters(model).map(({ name, variable }) => [name, [...variable.dataSync()]]));
}

/** Loads `files` into a fresh base; "accepted" after checking the result, "refused" after checking nothing changed. */
function check(files: AdapterFiles): "accepted" | "refused" {
  const model = base();
  const before = snapshot(model);
  try {
    adapterFromFiles(model, files, "fuzz");
  } catch (error) {
    assert(error instanceof Error, `threw a ${typeof error}, not an Error`);
    assertEquals(snapshot(model), before, `the model changed although loading failed (${error.message})`);
    assertEquals(loraLayers(model).length, 0, "no layer was wrapped");
    model.dispose();
    return "refused";
  }
  const finite = tf.tidy(() => {
    const values = namedParameters(model).map(({ variable }) => tf.all(tf.isFinite(variable)).dataSync()[0]);
    const out = model.apply(tf.linspace(-1, 1, 12).reshape([2, 6]));
    return values.every((v) => v === 1) && tf.all(tf.isFinite(out)).dataSync()[0] === 1;
  });
  model.dispose();
  assert(finite, "an accepted file gave values or outputs that are not finite");
  return "accepted";
}

for (
  const [kind, options] of [
    ["LoRA", { rank: 2, alpha: 4 }],
    ["DoRA", { rank: 2, alpha: 4, useDora: true }],
    ["VeRA", { kind: "vera", rank: 3 }],
  ] as [string, AddLoRAOptions][]
) {
  Deno.test(`fuzz: 300 mutations of a ${kind} adapter (tensors and config) load or fail cleanly, fast, no leak`, async () => {
    const good = await goodFiles(options);
    const config = JSON.parse(good.config);
    const before = tf.memory().numTensors;
    const tensors = runFuzz(
      150,
      31,
      (random) => mutateSafetensors(good.safetensors, random),
      ({ bytes }) => check({ ...good, safetensors: bytes }),
      200,
    );
    const configs = runFuzz(
      150,
      37,
      (random): Mutation & { text: string } => {
        const { what, value } = mutateJson(config, random);
        const text = JSON.stringify(value);
        return { what, bytes: new TextEncoder().encode(text), text };
      },
      (mutation) => check({ ...good, config: (mutation as Mutation & { text: string }).text }),
      200,
    );
    assertEquals(tf.memory().numTensors, before, "tensors leaked");
    console.log(`${kind}: tensors ${JSON.stringify(tensors)}; config ${JSON.stringify(configs)}`);
    assert(tensors.refused > 50 && configs.refused > 30, "most mutations are refused");
    assert(tensors.accepted + configs.accepted > 5, "some mutations keep the file valid");
  });
}
