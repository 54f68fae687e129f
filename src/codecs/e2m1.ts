/**
 * FP4 E2M1 as NVFP4 writes it (spec §5.2): magnitudes [0, .5, 1, 1.5, 2, 3, 4, 6], round-half-to-even,
 * saturating at 6; the sign bit is (x < 0), so tiny negatives that round to 0 are 0x8 while -0.0 is 0x0.
 * Two codes per byte, the element at even k in the low nibble.
 */
export const E2M1_VALUES: readonly number[] = [0, 0.5, 1, 1.5, 2, 3, 4, 6, -0, -0.5, -1, -1.5, -2, -3, -4, -6];

const BOUNDS = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5];

/** Reference, literally ModelOpt's rule: count bounds strictly below |x|, +1 at the ties 0.75, 1.75, 3.5. */
export function e2m1EncodeRef(x: number): number {
  const a = Math.abs(x);
  let idx = 0;
  for (const b of BOUNDS) if (b < a) idx++;
  if (a === 0.75 || a === 1.75 || a === 3.5) idx++;
  return ((x < 0 ? 1 : 0) << 3) | idx;
}

/** Fast, branch-free: the ties that round up are the ones compared with >=. */
export function e2m1Encode(x: number): number {
  const a = x < 0 ? -x : x;
  const idx =
    +(a > 0.25) + +(a >= 0.75) + +(a > 1.25) + +(a >= 1.75) + +(a > 2.5) + +(a >= 3.5) + +(a > 5);
  return (+(x < 0) << 3) | idx;
}

export function e2m1ToF32(code: number): number {
  return E2M1_VALUES[code & 0xf]!;
}

/** Packs codes [rows, K] into bytes [rows, K/2]: byte = code[2j] | code[2j+1] << 4. K must be even. */
export function packNibblesK(codes: Uint8Array, dst: Uint8Array = new Uint8Array(codes.length >> 1)): Uint8Array {
  for (let j = 0, i = 0; j < dst.length; j++, i += 2) dst[j] = (codes[i]! & 0xf) | ((codes[i + 1]! & 0xf) << 4);
  return dst;
}

/** Inverse of packNibblesK. */
export function unpackNibblesK(packed: Uint8Array, dst: Uint8Array = new Uint8Array(packed.length * 2)): Uint8Array {
  for (let j = 0; j < packed.length; j++) {
    dst[2 * j] = packed[j]! & 0xf;
    dst[2 * j + 1] = packed[j]! >>> 4;
  }
  return dst;
}
