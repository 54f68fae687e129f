/** Export options beside the format: the KV-cache mode. The formats themselves are records in src/formats/. */
import { UsageError } from '../errors.js';

export { FORMAT_NAMES, FORMATS, formatSpec, formatByQuantAlgo, type FormatName, type FormatSpec } from '../formats/registry.js';
import type { FormatSpec } from '../formats/registry.js';

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
