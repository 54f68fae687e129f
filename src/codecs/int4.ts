/**
 * Signed int4 packing of W4A16_AWQ / W4A8_AWQ (spec §6.8): pairs of *output rows*,
 * byte[i, k] = (q[2i, k] & 0xF) | (q[2i+1, k] & 0xF) << 4, two's-complement nibbles in [-8, 7].
 * (NVFP4 packs along K instead: see e2m1.ts. Mixing the two up is pitfall §15.1.)
 */

/** Packs q [N, K] (int8 holding values in [-8, 7]) into uint8 [N/2, K]. N must be even. */
export function packInt4Rows(q: Int8Array, N: number, K: number, dst: Uint8Array = new Uint8Array((N >> 1) * K)): Uint8Array {
  if (N % 2 !== 0) throw new RangeError(`int4 row packing needs an even number of rows, got ${N}`);
  for (let i = 0; i < N >> 1; i++) {
    const lo = 2 * i * K;
    const hi = lo + K;
    const out = i * K;
    for (let k = 0; k < K; k++) dst[out + k] = (q[lo + k]! & 0xf) | ((q[hi + k]! & 0xf) << 4);
  }
  return dst;
}

/** Inverse of packInt4Rows: uint8 [N/2, K] -> int8 [N, K]. */
export function unpackInt4Rows(packed: Uint8Array, N: number, K: number, dst: Int8Array = new Int8Array(N * K)): Int8Array {
  for (let i = 0; i < N >> 1; i++) {
    for (let k = 0; k < K; k++) {
      const b = packed[i * K + k]!;
      dst[2 * i * K + k] = ((b & 0xf) << 28) >> 28;
      dst[(2 * i + 1) * K + k] = (b << 24) >> 28;
    }
  }
  return dst;
}
