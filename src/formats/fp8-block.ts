/**
 * FP8 2-D block weight-only (quant_algo "fp8_pb_wo", spec §6.3): 128x128 tiles,
 *   weight_scale[bn, 0, bk, 0] = tileAmax / 448   (f32, shape [ceil(N/128), 1, ceil(K/128), 1]; a zero tile -> 1)
 *   weight[n, k]              = e4m3( W[n, k] / weight_scale[n/128, k/128] )  (tensor/tensor: f32 division)
 */
import { e4m3EncodeRef, e4m3Encode, E4M3_VALUES } from '../codecs/e4m3.js';
import { exportScale } from './common.js';

export const FP8_BLOCK = 128;

export function fp8BlockScaleShape(N: number, K: number): number[] {
  return [Math.ceil(N / FP8_BLOCK), 1, Math.ceil(K / FP8_BLOCK), 1];
}

/** Tile scales for rows [0, N) of W [N, K]; scales has ceil(N/128) * ceil(K/128) entries. */
export function fp8BlockScales(w: Float32Array, N: number, K: number): Float32Array {
  const BN = Math.ceil(N / FP8_BLOCK);
  const BK = Math.ceil(K / FP8_BLOCK);
  const amax = new Float32Array(BN * BK);
  for (let n = 0; n < N; n++) {
    const row = (n / FP8_BLOCK) | 0;
    for (let k = 0; k < K; k++) {
      const a = Math.abs(w[n * K + k]!);
      const j = row * BK + ((k / FP8_BLOCK) | 0);
      if (a > amax[j]!) amax[j] = a;
    }
  }
  for (let j = 0; j < amax.length; j++) amax[j] = exportScale(amax[j]!, 448);
  return amax;
}

export function quantizeFp8BlockRef(w: Float32Array, N: number, K: number, scales: Float32Array): Uint8Array {
  const BK = Math.ceil(K / FP8_BLOCK);
  const out = new Uint8Array(N * K);
  for (let n = 0; n < N; n++)
    for (let k = 0; k < K; k++) {
      const s = scales[((n / FP8_BLOCK) | 0) * BK + ((k / FP8_BLOCK) | 0)]!;
      out[n * K + k] = e4m3EncodeRef(Math.fround(w[n * K + k]! / s));
    }
  return out;
}

export function quantizeFp8Block(w: Float32Array, N: number, K: number, scales: Float32Array, out: Uint8Array = new Uint8Array(N * K)): Uint8Array {
  const BK = Math.ceil(K / FP8_BLOCK);
  for (let n = 0; n < N; n++) {
    const srow = ((n / FP8_BLOCK) | 0) * BK;
    const base = n * K;
    for (let kb = 0; kb < BK; kb++) {
      const s = scales[srow + kb]!;
      const end = Math.min(K, (kb + 1) * FP8_BLOCK);
      for (let k = kb * FP8_BLOCK; k < end; k++) out[base + k] = e4m3Encode(Math.fround(w[base + k]! / s));
    }
  }
  return out;
}

export function dequantizeFp8Block(q: Uint8Array, N: number, K: number, scales: Float32Array): Float32Array {
  const BK = Math.ceil(K / FP8_BLOCK);
  const out = new Float32Array(N * K);
  for (let n = 0; n < N; n++)
    for (let k = 0; k < K; k++)
      out[n * K + k] = Math.fround(E4M3_VALUES[q[n * K + k]!]! * scales[((n / FP8_BLOCK) | 0) * BK + ((k / FP8_BLOCK) | 0)]!);
  return out;
}
