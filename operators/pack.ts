import { map, type OperatorFunction } from 'rxjs';
import { packLinearScalars, packLinearStream, f32Scalar } from '../src/export/pack-linear.js';
import type { OutputTensor, PackedUnit, QuantizedUnit, StreamedOutput } from '../src/export/units.js';

/**
 * Turns codes into the stored layout and names of the format (spec §6): `weight` (packed),
 * `weight_scale`, `weight_scale_2`, `input_scale`, `pre_quant_scale`, `k_scale`/`v_scale`;
 * unquantized tensors pass through by reference (or with their new bytes, when AWQ folding changed
 * them). Weights stay streamed: each chunk is packed as the writer pulls it.
 *
 * @example
 * ```ts
 * readCheckpoint('model').pipe(quantize('fp8', { stats }), pack(), writeShards('out'));
 * ```
 */
export function pack(): OperatorFunction<QuantizedUnit, PackedUnit> {
  return map((unit) => ({ ...unit, ...packUnit(unit) }));
}

export function packUnit(unit: QuantizedUnit): { outputs: OutputTensor[]; streams: StreamedOutput[] } {
  const outputs: OutputTensor[] = [];
  const quantizedWeights = new Set(unit.linears.map((l) => (l.fused ? l.module : `${l.module}.weight`)));
  for (const t of unit.tensors) {
    if (quantizedWeights.has(t.name)) continue;
    const data = unit.replaced.get(t.name);
    outputs.push(data ? { name: t.name, dtype: t.dtype, shape: t.shape, data } : { name: t.name, dtype: t.dtype, shape: t.shape, source: t });
  }
  for (const l of unit.linears) outputs.push(...packLinearScalars(l, unit.plan.format));
  for (const [name, s] of unit.kvScales) outputs.push(f32Scalar(name, s));
  return { outputs, streams: unit.linears.map((l) => packLinearStream(l, unit.plan.format)) };
}
