/**
 * FP8 E4M3 "fn" (torch.float8_e4m3fn): 1 sign, 4 exponent (bias 7), 3 mantissa bits, no infinities,
 * 0x7F / 0xFF are NaN, largest finite 448, smallest subnormal 2^-9.
 *
 * Encoding is round-to-nearest-even. torch's cast does not saturate (|x| > 464 -> NaN), so every
 * exporter clamps to +-448 first (spec §5.1); `clamp` selects which behaviour is wanted.
 */
import { f32Bits } from './float.js';

export const E4M3_MAX = 448;

/** Reference: value of an e4m3 byte, from the definition. */
export function e4m3ToF32(byte: number): number {
  const sign = byte & 0x80 ? -1 : 1;
  const exp = (byte >>> 3) & 0xf;
  const man = byte & 7;
  if (exp === 15 && man === 7) return NaN;
  if (exp === 0) return sign * man * 2 ** -9;
  return sign * (1 + man / 8) * 2 ** (exp - 7);
}

/** Decode table, 256 entries. */
export const E4M3_VALUES: Float32Array = (() => {
  const t = new Float32Array(256);
  for (let i = 0; i < 256; i++) t[i] = e4m3ToF32(i);
  return t;
})();

/**
 * Reference encoder: nearest representable value by search, ties to the even code.
 * @param clamp clamp to +-448 first (what an exporter must do); without it, |x| > 464 gives NaN like torch.
 */
export function e4m3EncodeRef(x: number, clamp = true): number {
  if (Number.isNaN(x)) return 0x7f; // a JS number cannot carry a NaN's sign reliably
  const negative = x < 0 || Object.is(x, -0);
  let a = Math.abs(x);
  if (clamp) a = Math.min(a, E4M3_MAX);
  else if (a > 464) return negative ? 0xff : 0x7f;
  // Codes 0..0x7E are the non-negative finite values in increasing order.
  let lo = 0;
  let hi = 0x7e;
  if (a >= E4M3_VALUES[hi]!) return (negative ? 0x80 : 0) | hi;
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (E4M3_VALUES[mid]! <= a) lo = mid;
    else hi = mid;
  }
  const dLo = a - E4M3_VALUES[lo]!;
  const dHi = E4M3_VALUES[hi]! - a;
  const code = dLo < dHi ? lo : dHi < dLo ? hi : (lo & 1) === 0 ? lo : hi;
  return (negative ? 0x80 : 0) | code;
}

/**
 * Fast scalar encoder on the f32 bit pattern, clamping to +-448. Same results as the reference.
 * `x` must already be an f32 value (Math.fround'ed), as all kernel intermediates are.
 */
export function e4m3Encode(x: number): number {
  return e4m3EncodeBits(f32Bits(x), x);
}

/** The fast encoder on an f32 bit pattern `b` whose value is `x`. NaN keeps its sign bit, as in torch. */
function e4m3EncodeBits(b: number, x: number): number {
  const sign = (b >>> 24) & 0x80;
  const abs = b & 0x7fffffff;
  if (abs > 0x7f800000) return sign | 0x7f; // NaN
  if (abs >= 0x43e00000) return sign | 0x7e; // >= 448 (and inf): clamp
  if (abs < 0x3c800000) {
    // below 2^-6: subnormal grid of 2^-9; 8 * 2^-9 = 2^-6 is code 0x08, so the ranges join up.
    const s = (x < 0 ? -x : x) * 512;
    const r = Math.floor(s);
    const d = s - r;
    return sign | (d > 0.5 || (d === 0.5 && (r & 1) === 1) ? r + 1 : r);
  }
  // normal: keep 3 mantissa bits with round-to-nearest-even, rebias exponent 127 -> 7.
  const rounded = abs + 0x7ffff + ((abs >>> 20) & 1);
  return sign | ((rounded >>> 20) - (120 << 3));
}

/** Fast array encoder (clamping). Works on the bit patterns, so a NaN's sign survives as in torch. */
export function e4m3EncodeArray(src: Float32Array, dst: Uint8Array = new Uint8Array(src.length)): Uint8Array {
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  for (let i = 0; i < src.length; i++) dst[i] = e4m3EncodeBits(bits[i]!, src[i]!);
  return dst;
}
