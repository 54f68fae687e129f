/**
 * The AWQ search's candidate weights (awq.ts), built a band of rows at a time so that kernel-free
 * worker threads (awq-worker.ts) can build bands of one candidate side by side: the same arithmetic,
 * so the same bits, whoever builds which rows.
 */
import { roundToDType } from '../codecs/float.js';
import type { FloatDType } from '../safetensors/dtypes.js';

/** A format's in-place fake quantizer (QuantFormat.fakeQuantizeInPlace). */
export type FakeQuantizeInPlace = (w: Float32Array, N: number, K: number, amax: number, clip?: number) => Float32Array;

/** dtype(s) and dtype(1/s): the scales ModelOpt puts on the weight and on the input quantizer. */
export function castScales(s: Float32Array, dtype: FloatDType): { sw: Float32Array; p: Float32Array } {
  return { sw: s.map((v) => roundToDType(v, dtype)), p: s.map((v) => roundToDType(Math.fround(1 / v), dtype)) };
}

/** max |W[n, k] · sw[k]| over rows [n0, n1), f32 (before rounding to the dtype). */
export function candidateAmax(w: Float32Array, K: number, n0: number, n1: number, sw: Float32Array): number {
  let amax = 0;
  for (let n = n0; n < n1; n++) {
    const r = n * K;
    for (let k = 0; k < K; k++) {
      const a = Math.abs(w[r + k]! * sw[k]!);
      if (a > amax) amax = a;
    }
  }
  return Math.fround(amax);
}

/**
 * Rows [n0, n1) of the candidate C = fq(dtype(W · diag(sw))) · diag(p), written into rows
 * [off + n0, off + n1) of out [Nt, K], so that x · C^T = (x · p) · fq(W s)^T. `amax`: max |dtype(W sw)|
 * over the whole weight (= dtype(max |W sw|): rounding is monotonic). `scratch`: a [64, K] buffer.
 */
export function candidateRowsInto(
  out: Float32Array, off: number, w: Float32Array, K: number, n0: number, n1: number,
  sw: Float32Array, p: Float32Array, amax: number, fqInPlace: FakeQuantizeInPlace, dtype: FloatDType, scratch: Float32Array, clip = 1,
): void {
  // 64 rows at a time, in a scratch that stays in cache: W s, rounded, fake-quantized, written times p
  for (let b0 = n0; b0 < n1; b0 += CANDIDATE_ROWS) {
    const rows = Math.min(CANDIDATE_ROWS, n1 - b0);
    const block = scratch.subarray(0, rows * K);
    for (let r = 0; r < rows; r++) {
      const o = (b0 + r) * K;
      for (let k = 0; k < K; k++) block[r * K + k] = w[o + k]! * sw[k]!; // the store rounds to f32
    }
    roundArrayToDType(block, dtype);
    fqInPlace(block, rows, K, amax, clip);
    for (let r = 0; r < rows; r++) {
      const o = (off + b0 + r) * K;
      for (let k = 0; k < K; k++) out[o + k] = block[r * K + k]! * p[k]!;
    }
  }
}

/** Rows of a candidate made at once (a [64, K] block: 1 MiB at K = 4096). */
export const CANDIDATE_ROWS = 64;

/** Rounds f32 values (finite) to the dtype in place; bf16 by round-to-nearest-even on the bits. */
export function roundArrayToDType(a: Float32Array, dtype: FloatDType): void {
  if (dtype === 'F32') return;
  if (dtype === 'BF16') {
    const u = new Uint32Array(a.buffer, a.byteOffset, a.length);
    for (let i = 0; i < u.length; i++) {
      const b = u[i]!;
      u[i] = (b + 0x7fff + ((b >>> 16) & 1)) & 0xffff0000;
    }
    return;
  }
  for (let i = 0; i < a.length; i++) a[i] = roundToDType(a[i]!, dtype);
}

/** Writes rows [n0, n1) of m [N, K] (times p[k] per column, when given) into rows [off + n0, off + n1) of out [Nt, K]. */
export function rowsScaledInto(out: Float32Array, off: number, m: Float32Array, K: number, n0: number, n1: number, p?: Float32Array): void {
  if (!p) {
    out.set(m.subarray(n0 * K, n1 * K), (off + n0) * K);
    return;
  }
  for (let n = n0; n < n1; n++) {
    const o = (off + n) * K, r = n * K;
    for (let k = 0; k < K; k++) out[o + k] = m[r + k]! * p[k]!;
  }
}
