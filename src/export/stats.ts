/**
 * Activation statistics (spec §11; naming as ../shared/data/reference): per linear
 * `<module>.input_amax` (f32 scalar), `<module>.input_absmean` [K], optional
 * `<module>.input_channel_amax` [K] and `<module>.pre_quant_scale` [K]; per attention
 * `<attn>.k_amax` / `<attn>.v_amax`. Unknown keys are ignored.
 */
import { SafetensorsFile } from '../safetensors/file.js';
import { isFloatWeightDType } from '../safetensors/dtypes.js';
import { QuantizationError } from '../errors.js';

export type Stats = Map<string, Float32Array>;

export async function loadStats(path: string): Promise<Stats> {
  const f = await SafetensorsFile.open(path);
  try {
    const out: Stats = new Map();
    for (const t of f.tensors.values()) {
      if (!isFloatWeightDType(t.dtype)) continue; // input_ids and the like
      out.set(t.name, await t.toFloat32());
    }
    return out;
  } finally {
    await f.close();
  }
}

/** A scalar statistic; checks it is finite and non-negative. */
export function scalarStat(stats: Stats, key: string): number | undefined {
  const v = stats.get(key);
  if (!v) return undefined;
  if (v.length !== 1) throw new QuantizationError(`statistic "${key}" should be a scalar, has ${v.length} values`);
  const x = v[0]!;
  if (!Number.isFinite(x) || x < 0) throw new QuantizationError(`statistic "${key}" is ${x}; expected a finite non-negative amax`);
  return x;
}
