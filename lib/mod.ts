/**
 * LoRA (Low-Rank Adaptation) on TensorFlow.js, small enough to read in one sitting. The files follow the
 * tutorial, then PEFT:
 *
 * - {@link ./module.ts}: `Module`, the module tree and its one walk (`namedModules`, `getModule`, `setModule`).
 * - {@link ./layers.ts}: `Linear`, `ReLU`, `freezeLinearLayers`.
 * - {@link ./lora.ts}: `LoRALayer`, `LinearWithLoRA`, `LinearWithLoRAMerged`, the scaling conventions.
 * - {@link ./mlp.ts}: the tutorial's `MultilayerPerceptron`.
 * - {@link ./mnist.ts}: MNIST from its IDX files, `DataLoader`.
 * - {@link ./train.ts}: `train`, `computeAccuracy`, Adam, cross-entropy.
 * - {@link ./peft/mod.ts}: named adapters, targets by name, merging, mixed batches, PEFT's adapter files.
 * - {@link ./weights.ts} and {@link ./safetensors.ts}: a model's weights as a safetensors file.
 * - {@link ./linalg.ts}: the SVD (Jacobi) and Eckart–Young's best rank-r approximation.
 * - {@link ./backend.ts}: `initBackend` picks wasm, cpu, webgpu or the CUDA backend.
 * - {@link ./ops.ts}, {@link ./optim.ts}: the matrix product and Adam, written for speed;
 *   {@link ./tfjs_internals.ts}: the few places that reach into TensorFlow.js's internals.
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
export { BACKEND_NAMES, type BackendName, initBackend } from "./backend.ts";
export {
  countParameters,
  getModule,
  Module,
  namedModules,
  type NamedParameter,
  namedParameters,
  type ParameterCount,
  Sequential,
  setModule,
  trainableVariables,
} from "./module.ts";
export { freezeLinearLayers, Linear, type LinearOptions, ReLU } from "./layers.ts";
export {
  LinearWithLoRA,
  LinearWithLoRAMerged,
  LoRALayer,
  type LoRAOptions,
  loraScaling,
  type ScalingConvention,
} from "./lora.ts";
export { MultilayerPerceptron } from "./mlp.ts";
export { bestRankR, formatMatrix, frobenius, subtract, type Svd, svd, toMatrix, transpose } from "./linalg.ts";
export {
  type Batch,
  DataLoader,
  type DataLoaderOptions,
  loadMnist,
  mnistDataDir,
  mnistFromIdx,
  type MnistSplit,
  parseIdx,
  seededRandom,
  subset,
} from "./mnist.ts";
export {
  Adam,
  adam,
  type AdamOptions,
  computeAccuracy,
  crossEntropy,
  type EpochSummary,
  type Progress,
  train,
  type TrainHistory,
  type TrainOptions,
  trainStep,
} from "./train.ts";
export { matMul, softmaxCrossEntropy } from "./ops.ts";
export { loadWeights, saveWeights, weightsFromSafetensors, weightsToSafetensors } from "./weights.ts";
export { decodeSafetensors, encodeSafetensors, type TensorData } from "./safetensors.ts";
export {
  type AdapterFiles,
  adapterFromFiles,
  type AdapterOptions,
  adapterToFiles,
  addAdapter,
  addLoRA,
  type AddLoRAOptions,
  applyMixedBatch,
  BASE_ADAPTER,
  deleteAdapter,
  disableAdapters,
  enableAdapters,
  findTargets,
  LinearWithAdapters,
  type LinearWithAdaptersOptions,
  listAdapters,
  loadAdapter,
  type LoraConfig,
  loraLayers,
  matchesTarget,
  mergeAdapter,
  mergeAndUnload,
  saveAdapter,
  setAdapter,
  type TargetModules,
  type TargetOptions,
  unmergeAdapter,
} from "./peft/mod.ts";
