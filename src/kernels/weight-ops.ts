/**
 * Element-wise edits of a weight that AWQ export applies before quantizing (spec §8.2-8.3), each
 * rounding back to the weight's dtype as torch does when it stores the result. They depend only on
 * the row or column index, so they apply to any row range of the weight on its own.
 */
import { roundToDType } from '../codecs/float.js';
import type { FloatDType } from '../safetensors/dtypes.js';

export type WeightOp =
  /** W[n, k] <- dtype(W[n, k] / s[k])  (smoothing by a pre_quant_scale) */
  | { kind: 'divCol'; s: Float32Array }
  /** W[n, k] <- dtype(W[n, k] * s[n])  (a following linear's pre_quant_scale folded into these rows) */
  | { kind: 'mulRow'; s: Float32Array }
  /** W[n, k] <- dtype(f32(W[n, k] * old[k]) / new[k])  (re-smoothing fused siblings to their mean scale) */
  | { kind: 'resmooth'; old: Float32Array; new: Float32Array };

/** Applies ops to rows [row0, row0 + w.length / K) of a weight, in place. */
export function applyWeightOps(w: Float32Array, K: number, row0: number, ops: readonly WeightOp[], dtype: FloatDType): void {
  for (const op of ops) {
    const rows = w.length / K;
    for (let r = 0; r < rows; r++) {
      const o = r * K;
      if (op.kind === 'mulRow') {
        const s = op.s[row0 + r]!;
        for (let k = 0; k < K; k++) w[o + k] = roundToDType(Math.fround(w[o + k]! * s), dtype);
      } else if (op.kind === 'divCol') {
        for (let k = 0; k < K; k++) w[o + k] = roundToDType(Math.fround(w[o + k]! / op.s[k]!), dtype);
      } else {
        for (let k = 0; k < K; k++) w[o + k] = roundToDType(Math.fround(Math.fround(w[o + k]! * op.old[k]!) / op.new[k]!), dtype);
      }
    }
  }
}
