/** Shared helpers of the format kernels. All arithmetic is f32 (Math.fround after every op), as torch does. */
import type { FloatDType } from '../safetensors/dtypes.js';

/** max |x| over an f32 array (NaN-propagating: returns NaN if any element is NaN). */
export function amaxOf(w: Float32Array, start = 0, end = w.length): number {
  let m = 0;
  for (let i = start; i < end; i++) {
    const a = Math.abs(w[i]!);
    if (a > m) m = a;
    else if (a !== a) return NaN;
  }
  return m;
}

/** Index and value of the first non-finite element, or -1. */
export function firstNonFinite(w: Float32Array): number {
  for (let i = 0; i < w.length; i++) if (!Number.isFinite(w[i]!)) return i;
  return -1;
}

/** Scale = amax / maxbound in f32, with ModelOpt's export rule: amax 0 or NaN -> maxbound (scale 1). */
export function exportScale(amax: number, maxbound: number): number {
  if (amax === 0 || Number.isNaN(amax)) return 1;
  return Math.fround(Math.fround(amax) / maxbound);
}

export type { FloatDType };
