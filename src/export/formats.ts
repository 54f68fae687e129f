/** The export formats rxquant writes, and what each implies (spec §3.3, §6). */
import { UsageError } from '../errors.js';

export const FORMAT_NAMES = ['fp8', 'fp8_pb_wo', 'nvfp4', 'nvfp4_awq', 'int4_awq', 'w4a8_awq'] as const;
export type FormatName = (typeof FORMAT_NAMES)[number];

export interface FormatSpec {
  name: FormatName;
  /** `quant_algo` as ModelOpt spells it. */
  quantAlgo: string;
  /** `group_size` written to hf_quant_config.json, if any. */
  groupSize?: number;
  /** AWQ family: `has_zero_point: false, pre_quant_scale: true`, pre_quant_scale tensors and folding. */
  awq: boolean;
  /** Needs `<module>.input_amax` statistics (writes `input_scale`). */
  inputScaleDivisor?: number;
  /** in_features must be a multiple of this, or the linear stays unquantized. */
  kMultiple: number;
  /** out_features must be even (int4 packs pairs of rows). */
  evenRows: boolean;
  /** Fused siblings share input_scale / weight_scale_2 (spec §8.2: everything but per-tensor FP8). */
  unifyGroups: boolean;
  description: string;
}

export const FORMATS: Record<FormatName, FormatSpec> = {
  fp8: {
    name: 'fp8', quantAlgo: 'FP8', awq: false, inputScaleDivisor: 448, kMultiple: 1, evenRows: false, unifyGroups: false,
    description: 'FP8 E4M3 weights and activations, per-tensor scales',
  },
  fp8_pb_wo: {
    name: 'fp8_pb_wo', quantAlgo: 'fp8_pb_wo', awq: false, kMultiple: 1, evenRows: false, unifyGroups: true,
    description: 'FP8 E4M3 weights with 128x128 block scales, weight-only',
  },
  nvfp4: {
    name: 'nvfp4', quantAlgo: 'NVFP4', groupSize: 16, awq: false, inputScaleDivisor: 2688, kMultiple: 16, evenRows: false, unifyGroups: true,
    description: 'NVFP4 (E2M1 weights and activations, E4M3 scales per 16, f32 global scale)',
  },
  nvfp4_awq: {
    name: 'nvfp4_awq', quantAlgo: 'NVFP4_AWQ', groupSize: 16, awq: true, inputScaleDivisor: 2688, kMultiple: 16, evenRows: false, unifyGroups: true,
    description: 'NVFP4 with AWQ pre-quant scales',
  },
  int4_awq: {
    name: 'int4_awq', quantAlgo: 'W4A16_AWQ', groupSize: 128, awq: true, kMultiple: 128, evenRows: true, unifyGroups: true,
    description: 'INT4 weights (group 128) with AWQ pre-quant scales, 16-bit activations',
  },
  w4a8_awq: {
    name: 'w4a8_awq', quantAlgo: 'W4A8_AWQ', groupSize: 128, awq: true, inputScaleDivisor: 448, kMultiple: 128, evenRows: true, unifyGroups: true,
    description: 'INT4 weights (group 128) with AWQ pre-quant scales, FP8 activations',
  },
};

export function formatSpec(name: string): FormatSpec {
  const f = (FORMATS as Record<string, FormatSpec>)[name.toLowerCase()];
  if (!f) throw new UsageError(`unknown format "${name}"; choose one of: ${FORMAT_NAMES.join(', ')}`);
  return f;
}

export const KV_CACHE_MODES = ['fp8_cast', 'fp8', 'none'] as const;
export type KvCacheMode = (typeof KV_CACHE_MODES)[number];

export function kvCacheMode(s: string): KvCacheMode {
  if (!(KV_CACHE_MODES as readonly string[]).includes(s)) {
    throw new UsageError(`unknown --kv-cache "${s}"; choose one of: ${KV_CACHE_MODES.join(', ')}`);
  }
  return s as KvCacheMode;
}

/** Whether an export needs activation statistics: input scales, or calibrated KV-cache scales. */
export function needsActivationStats(format: FormatSpec, kv: KvCacheMode): boolean {
  return format.inputScaleDivisor !== undefined || kv === 'fp8';
}
