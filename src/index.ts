/** rxquant: Hugging Face checkpoints to NVIDIA ModelOpt unified checkpoints, streamed through RxJS operators. */
export * from './errors.js';
export * from './safetensors/index.js';
export * from './codecs/index.js';
export * from './models/index.js';
export { openModel, type SourceModel } from './model.js';
export { FORMATS, FORMAT_NAMES, formatSpec, type FormatName, type FormatSpec, type KvCacheMode } from './export/formats.js';
export { createPlan, type ExportPlan, type ExportOptions, type LinearDecision } from './export/plan.js';
export { loadStats, type Stats } from './export/stats.js';
export { summarizeExcludeModules, matchesPattern } from './export/exclude.js';
export { buildHfQuantConfig, toQuantizationConfig, type HfQuantConfig } from './export/quant-config.js';
export { exportCheckpoint, type ExportCheckpointOptions } from './export/run.js';
export { KernelPool } from './kernels/pool.js';
export type { ModelUnit, QuantizedUnit, QuantizedLinear, PackedUnit, OutputTensor } from './pipeline/units.js';
export * from '../operators/index.js';
