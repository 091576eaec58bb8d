/**
 * LoRA (Low-Rank Adaptation) on TensorFlow.js, small enough to read in one sitting.
 *
 * - {@link ./layers.ts}: `Linear`, `LoRALayer`, `LinearWithLoRA`, `LinearWithLoRAMerged`, scaling conventions.
 * - {@link ./model.ts}: `MultilayerPerceptron`, `namedParameters`, `freezeLinearLayers`, `addLoRA`, counts.
 * - {@link ./mnist.ts}: MNIST from its IDX files, `DataLoader`.
 * - {@link ./train.ts}: `train`, `computeAccuracy`, Adam, cross-entropy.
 * - {@link ./backend.ts}: `initBackend` picks wasm, cpu, webgpu or the CUDA backend.
 * - {@link ./ops.ts}: the matrix product with a hand-written, selective gradient.
 * - {@link ./adapters.ts}: weights and LoRA adapters as files (safetensors, PEFT's layout), several adapters.
 * - {@link ./safetensors.ts}: the safetensors file format on its own.
 *
 * @example Finetune a trained model with LoRA
 * ```ts
 * import { addLoRA, countParameters, initBackend, MultilayerPerceptron } from "./mod.ts";
 * await initBackend();
 * const model = new MultilayerPerceptron(784, 128, 256, 10, { seed: 123 });
 * const lora = addLoRA(model.clone(), { rank: 4, alpha: 8 });
 * console.log(countParameters(lora)); // { total: 142322, trainable: 6248 }
 * ```
 *
 * @module
 */
export * from "./backend.ts";
export * from "./layers.ts";
export * from "./model.ts";
export * from "./mnist.ts";
export * from "./ops.ts";
export * from "./train.ts";
export * from "./adapters.ts";
export * from "./safetensors.ts";
