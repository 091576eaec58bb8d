/**
 * LoRA (Low-Rank Adaptation) on TensorFlow.js, small enough to read in one sitting. The files follow the
 * tutorial, then PEFT:
 *
 * - {@link ./module.ts}: `Module`, the module tree and its one walk (`namedModules`, `getModule`, `setModule`).
 * - {@link ./layers.ts}: `Linear`, `ReLU`, `freezeLinearLayers`.
 * - {@link ./lora.ts}: `LoRALayer`, `LinearWithLoRA`, `LinearWithLoRAMerged`, the scaling conventions, how A
 *   and B start (PEFT's random starts and PiSSA).
 * - {@link ./quant.ts}: QLoRA's frozen base: NF4 and int8 weights, `QuantizedLinear`, `quantizeModel`.
 * - {@link ./dora.ts}: DoRA from scratch: `DoRALayer`, `LinearWithDoRA`, `LinearWithDoRAMerged`.
 * - {@link ./mlp.ts}: the tutorial's `MultilayerPerceptron`.
 * - {@link ./mnist.ts}: MNIST from its IDX files, `DataLoader`.
 * - {@link ./train.ts}: `train`, `computeAccuracy`, Adam, cross-entropy.
 * - {@link ./peft/mod.ts}: named adapters, targets by name, merging, mixed batches, PEFT's adapter files,
 *   combining adapters.
 * - {@link ./weights.ts} and {@link ./safetensors.ts}: a model's weights as a safetensors file.
 * - {@link ./linalg.ts}: the SVD (Jacobi) and Eckart–Young's best rank-r approximation.
 * - {@link ./gpt/mod.ts}: a tiny GPT (`GPT`, attention with q/k/v/out projections LoRA can target), its
 *   training step, `generate` with a key/value cache; {@link ./words.ts}: words and names to train it on.
 * - {@link ./backend.ts}: `initBackend` picks wasm, cpu, webgpu or the CUDA backend.
 * - {@link ./ops.ts}, {@link ./optim.ts}: the matrix product and Adam, written for speed;
 *   {@link ./tfjs_internals.ts}: the few places that reach into TensorFlow.js's internals.
 *
 * @example Finetune a trained model with LoRA
 * ```ts
 * import assert from "node:assert/strict";
 * import { addLoRA, countParameters, initBackend, MultilayerPerceptron } from "./mod.ts";
 * await initBackend();
 * const model = new MultilayerPerceptron(784, 128, 256, 10, { seed: 123 });
 * const lora = addLoRA(model.clone(), { rank: 4, alpha: 8 });
 * assert.deepEqual(countParameters(lora), { total: 142322, trainable: 6248 });
 * ```
 *
 * @module
 */
export { HFTokenizer, loadPretrained, type Pretrained, type PretrainedConfig } from "./hf/mod.ts";
export { BACKEND_NAMES, type BackendName, type BackendOptions, initBackend, type StartedBackend } from "./backend.ts";
export { blasProductCount, type BlasStatus, blasStatus } from "./blas.ts";
export { disableFused, enableFused, fusedInUse } from "./fused.ts";
export {
  countParameters,
  freezeBase,
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
export { type BaseLayer, freezeLinearLayers, isBaseLayer, Linear, type LinearOptions, ReLU } from "./layers.ts";
export {
  dequantizeInt8Rows,
  dequantizeNF4,
  type Int8Rows,
  NF4_CODE,
  type NF4Tensor,
  quantizedBytes,
  QuantizedLinear,
  quantizeInt8Rows,
  quantizeModel,
  type QuantizeModelOptions,
  quantizeNF4,
  type QuantizeSpec,
} from "./quant.ts";
export {
  createLoRALayer,
  LinearWithLoRA,
  LinearWithLoRAMerged,
  type LoRAInit,
  LoRALayer,
  type LoRAOptions,
  loraScaling,
  pissaInit,
  type ScalingConvention,
} from "./lora.ts";
export {
  DoRALayer,
  type DoRAOptions,
  LinearWithDoRA,
  LinearWithDoRAMerged,
  type MagnitudeDirectionChange,
  magnitudeDirectionChange,
  type NormAxis,
} from "./dora.ts";
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
  subset,
} from "./mnist.ts";
export { seededRandom, shuffleInPlace } from "./random.ts";
export {
  Adam,
  adam,
  type AdamOptions,
  computeAccuracy,
  crossEntropy,
  type EpochSummary,
  optimizerStep,
  type ParameterGroup,
  type Progress,
  train,
  type TrainHistory,
  type TrainOptions,
  type TrainStep,
  trainStep,
} from "./train.ts";
export { linear, loraLinear, matMul, softmaxCrossEntropy } from "./ops.ts";
export { loadWeights, saveWeights, weightsFromSafetensors, weightsToSafetensors } from "./weights.ts";
export { decodeSafetensors, encodeSafetensors, type TensorData } from "./safetensors.ts";
export {
  ADAPTER_KINDS,
  type AdapterFiles,
  adapterFromFiles,
  type AdapterKind,
  type AdapterLayerOptions,
  type AdapterOptions,
  type AdapterSpec,
  adapterToFiles,
  addAdapter,
  addLoRA,
  type AddLoRAOptions,
  addWeightedAdapter,
  applyMixedBatch,
  BASE_ADAPTER,
  COMBINATION_TYPES,
  type CombinationType,
  createLoraPlusOptimizer,
  deleteAdapter,
  disableAdapters,
  doraKind,
  enableAdapters,
  findTargets,
  isTutorialLayer,
  kindOf,
  layerRank,
  type LayerSettings,
  layerSettings,
  LinearWithAdapters,
  type LinearWithAdaptersOptions,
  listAdapters,
  loadAdapter,
  type LoraConfig,
  loraKind,
  loraLayers,
  type LoraPlusOptions,
  type MajoritySignMethod,
  matchesTarget,
  mergeAdapter,
  mergeAndUnload,
  type MergeOptions,
  type MergeRule,
  mergeTaskTensors,
  readConfig,
  saveAdapter,
  setAdapter,
  type TargetModules,
  type TargetOptions,
  unmergeAdapter,
  veraKind,
  VeRALayer,
  type VeRAOptions,
  type WeightedAdapterOptions,
  writeConfig,
} from "./peft/mod.ts";
export {
  Block,
  causalAttention,
  type CausalLM,
  causalMask,
  CausalSelfAttention,
  disposeCache,
  Embedding,
  embeddingLookup,
  evaluateLoss,
  GELU,
  gelu,
  generate,
  type GenerateOptions,
  GPT,
  type GPTConfig,
  type GPTOptions,
  type KVCache,
  type LanguageModel,
  languageModelStep,
  LayerNorm,
  layerNorm,
  type LossReport,
  MLP,
  sampleWords,
  type SampleWordsOptions,
  sequenceCrossEntropy,
} from "./gpt/mod.ts";
export {
  CharTokenizer,
  cmudictDir,
  firstNamesDir,
  loadNames,
  loadWords,
  splitWords,
  type TokenBatch,
  TokenLoader,
  type TokenLoaderOptions,
  type Windows,
  wordWindows,
} from "./words.ts";
