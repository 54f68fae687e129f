/**
 * hf_quant_config.json (spec §3) and config.json's quantization_config (spec §4), key for key in
 * ModelOpt's order.
 */
import { formatByQuantAlgo } from '../formats/registry.js';
import type { FormatSpec, KvCacheMode } from './formats.js';
import { summarizeExcludeModules } from './exclude.js';
import type { PyValue } from '../util/pyjson.js';

/** The producer block engines test for (`producer.name == "modelopt"`); the version is the format version matched. */
export const PRODUCER = { name: 'modelopt', version: '0.47.0' };

export interface HfQuantConfig {
  producer: { name: string; version: string };
  quantization: {
    quant_algo: string;
    kv_cache_quant_algo: string | null;
    group_size?: number;
    has_zero_point?: boolean;
    pre_quant_scale?: boolean;
    exclude_modules: string[];
  };
}

export function kvCacheAlgo(mode: KvCacheMode): string | null {
  return mode === 'none' ? null : 'FP8';
}

export function buildHfQuantConfig(format: FormatSpec, kv: KvCacheMode, unquantized: string[], quantized: string[]): HfQuantConfig {
  const q = { quant_algo: format.quantAlgo, kv_cache_quant_algo: kvCacheAlgo(kv) } as HfQuantConfig['quantization'];
  if (format.groupSize !== undefined) q.group_size = format.groupSize;
  if (format.awq) {
    q.has_zero_point = false;
    q.pre_quant_scale = true;
  }
  q.exclude_modules = summarizeExcludeModules(unquantized, quantized);
  return { producer: { ...PRODUCER }, quantization: q };
}

const FP8_SCHEME = () => ({ dynamic: false, num_bits: 8, type: 'float' });

/** `convert_hf_quant_config_format`: the flat block stored under config.json's `quantization_config`. */
export function toQuantizationConfig(hf: HfQuantConfig): Record<string, PyValue> {
  const q = hf.quantization;
  const out: Record<string, PyValue> = {};
  const groups = formatByQuantAlgo(q.quant_algo)?.configGroups?.(q.group_size ?? undefined);
  if (groups) out.config_groups = groups;
  out.ignore = [...q.exclude_modules];
  out.quant_algo = q.quant_algo;
  if (q.kv_cache_quant_algo !== null) {
    out.kv_cache_scheme = q.kv_cache_quant_algo === 'FP8' ? FP8_SCHEME() : q.kv_cache_quant_algo;
  }
  out.producer = { ...hf.producer };
  out.quant_method = 'modelopt';
  return out;
}
