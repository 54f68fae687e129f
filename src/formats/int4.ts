/**
 * INT4 AWQ weights (W4A16_AWQ and W4A8_AWQ, spec §6.8-6.9), group 128 along K:
 *   weight_scale[n, g] = blockAmax / 7; 0 -> 1                     (f32 [N, K/128])
 *   q[n, k]            = clamp(rne(W / weight_scale[n, k/128]), -8, 7)   (f32 division)
 *   weight             = pairs of output rows, row 2i low nibble   (uint8 [N/2, K])
 * W4A8 adds weight_scale_2 = amax(W) / 448 (a scalar, shared across a fused group).
 */
import { rne } from '../codecs/float.js';
import { packInt4Rows, unpackInt4Rows } from '../codecs/int4.js';
import { exportScale } from './common.js';

export const INT4_GROUP = 128;

export function int4Scales(w: Float32Array, N: number, K: number): Float32Array {
  const ng = K / INT4_GROUP;
  const scales = new Float32Array(N * ng);
  for (let n = 0; n < N; n++)
    for (let g = 0; g < ng; g++) {
      let m = 0;
      const base = n * K + g * INT4_GROUP;
      for (let i = 0; i < INT4_GROUP; i++) {
        const a = Math.abs(w[base + i]!);
        if (a > m) m = a;
      }
      scales[n * ng + g] = exportScale(m, 7);
    }
  return scales;
}

/** Reference: a plain loop, packing with the codec. */
export function quantizeInt4Ref(w: Float32Array, N: number, K: number, scales: Float32Array): Uint8Array {
  const ng = K / INT4_GROUP;
  const q = new Int8Array(N * K);
  for (let n = 0; n < N; n++)
    for (let k = 0; k < K; k++) {
      const v = Math.fround(w[n * K + k]! / scales[n * ng + Math.floor(k / INT4_GROUP)]!);
      const r = v < 0 ? -rne(-v) : rne(v);
      q[n * K + k] = Math.min(7, Math.max(-8, r));
    }
  return packInt4Rows(q, N, K);
}

/** Fast: quantizes a pair of rows at a time straight into packed bytes. */
export function quantizeInt4(w: Float32Array, N: number, K: number, scales: Float32Array, out = new Uint8Array((N >> 1) * K)): Uint8Array {
  const ng = K / INT4_GROUP;
  for (let i = 0; i < N >> 1; i++) {
    const r0 = 2 * i * K;
    const r1 = r0 + K;
    for (let k = 0; k < K; k++) {
      const g = (k / INT4_GROUP) | 0;
      const a = q4(Math.fround(w[r0 + k]! / scales[2 * i * ng + g]!));
      const b = q4(Math.fround(w[r1 + k]! / scales[(2 * i + 1) * ng + g]!));
      out[i * K + k] = (a & 0xf) | ((b & 0xf) << 4);
    }
  }
  return out;
}

/** Round half to even and clamp to [-8, 7]. Math.round rounds half up, so fix the odd ties. */
function q4(v: number): number {
  let r = Math.round(v);
  if (r - v === 0.5 && (r & 1) !== 0) r -= 1;
  return r > 7 ? 7 : r < -8 ? -8 : r;
}

export function dequantizeInt4(packed: Uint8Array, N: number, K: number, scales: Float32Array): Float32Array {
  const q = unpackInt4Rows(packed, N, K);
  const ng = K / INT4_GROUP;
  const out = new Float32Array(N * K);
  for (let n = 0; n < N; n++)
    for (let k = 0; k < K; k++) out[n * K + k] = Math.fround(q[n * K + k]! * scales[n * ng + ((k / INT4_GROUP) | 0)]!);
  return out;
}
