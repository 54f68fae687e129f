/**
 * bf16 / f16 <-> f32 conversions, each as a plain scalar reference and a fast array version.
 * Rounding is round-to-nearest-even, as torch's `.to(torch.bfloat16)` / `.to(torch.float16)`.
 */
import type { DType } from '../safetensors/dtypes.js';
import { QuantizationError } from '../errors.js';

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** Bit pattern of a number rounded to f32. */
export function f32Bits(x: number): number {
  f32[0] = x;
  return u32[0]!;
}

export function f32FromBits(bits: number): number {
  u32[0] = bits >>> 0;
  return f32[0]!;
}

// ---------------------------------------------------------------- bf16

/** Reference: bf16 bits -> value. */
export function bf16ToF32(bits: number): number {
  return f32FromBits((bits & 0xffff) << 16);
}

/** Reference: value -> bf16 bits, round-to-nearest-even (torch: NaN -> 0x7FC0). */
export function f32ToBf16(x: number): number {
  if (Number.isNaN(x)) return 0x7fc0;
  const bits = f32Bits(x);
  const lsb = (bits >>> 16) & 1;
  return ((bits + 0x7fff + lsb) >>> 16) & 0xffff;
}

/** Rounds a number to the nearest bf16 value (returns the value, not the bits). */
export function roundBf16(x: number): number {
  return bf16ToF32(f32ToBf16(x));
}

/** Fast: bf16 bit array -> f32 array. */
export function bf16ToF32Array(src: Uint16Array, dst: Float32Array = new Float32Array(src.length)): Float32Array {
  const out = new Uint32Array(dst.buffer, dst.byteOffset, src.length);
  for (let i = 0; i < src.length; i++) out[i] = src[i]! << 16;
  return dst;
}

/** Fast: f32 array -> bf16 bit array, round-to-nearest-even. */
export function f32ToBf16Array(src: Float32Array, dst: Uint16Array = new Uint16Array(src.length)): Uint16Array {
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  for (let i = 0; i < src.length; i++) {
    const b = bits[i]!;
    // NaN: exponent all ones and a non-zero mantissa.
    dst[i] = (b & 0x7fffffff) > 0x7f800000 ? 0x7fc0 : (b + 0x7fff + ((b >>> 16) & 1)) >>> 16;
  }
  return dst;
}

// ---------------------------------------------------------------- f16

/** Reference: f16 bits -> value, from the IEEE definition. */
export function f16ToF32(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exp = (bits >>> 10) & 0x1f;
  const man = bits & 0x3ff;
  if (exp === 0) return sign * man * 2 ** -24;
  if (exp === 31) return man === 0 ? sign * Infinity : NaN;
  return sign * (1 + man / 1024) * 2 ** (exp - 15);
}

/** Reference: value -> f16 bits, round-to-nearest-even, overflow to inf, NaN -> sign|0x7E00 (torch). */
export function f32ToF16(x: number): number {
  const xf = Math.fround(x);
  const sign = f32Bits(xf) & 0x80000000 ? 0x8000 : 0;
  if (Number.isNaN(xf)) return sign | 0x7e00;
  const a = Math.abs(xf);
  if (a >= 65520) return sign | 0x7c00; // 65520 is the tie between 65504 and 2^16: rounds up to inf
  if (a < 2 ** -14) return sign | rne(a * 2 ** 24); // subnormal; 1024 becomes the smallest normal
  let e = Math.floor(Math.log2(a));
  if (2 ** e > a) e -= 1; // guard log2 rounding
  if (2 ** (e + 1) <= a) e += 1;
  let q = rne((a / 2 ** e - 1) * 1024);
  if (q === 1024) {
    q = 0;
    e += 1;
  }
  if (e + 15 >= 31) return sign | 0x7c00;
  return sign | ((e + 15) << 10) | q;
}

/** Round half to even of a non-negative number. */
export function rne(v: number): number {
  const r = Math.floor(v);
  const d = v - r;
  if (d > 0.5 || (d === 0.5 && (r & 1) === 1)) return r + 1;
  return r;
}

let F16_TABLE: Float32Array | undefined;
/** The 65,536-entry f16 -> f32 table used by the fast decoder. */
function f16Table(): Float32Array {
  if (!F16_TABLE) {
    F16_TABLE = new Float32Array(65536);
    for (let i = 0; i < 65536; i++) F16_TABLE[i] = f16ToF32(i);
  }
  return F16_TABLE;
}

/** Fast: f16 bit array -> f32 array (table lookup). */
export function f16ToF32Array(src: Uint16Array, dst: Float32Array = new Float32Array(src.length)): Float32Array {
  const t = f16Table();
  for (let i = 0; i < src.length; i++) dst[i] = t[src[i]!]!;
  return dst;
}

/** Fast: f32 array -> f16 bits, by bit manipulation (same results as the reference). */
export function f32ToF16Array(src: Float32Array, dst: Uint16Array = new Uint16Array(src.length)): Uint16Array {
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  for (let i = 0; i < src.length; i++) {
    const b = bits[i]!;
    const sign = (b >>> 16) & 0x8000;
    const abs = b & 0x7fffffff;
    let h: number;
    if (abs > 0x7f800000) h = 0x7e00; // NaN
    else if (abs >= 0x477ff000) h = 0x7c00; // >= 65520 -> inf
    else if (abs < 0x38800000) {
      // below 2^-14: subnormal. value * 2^24, rounded to nearest even.
      const v = src[i]! < 0 ? -src[i]! : src[i]!;
      const s = v * 16777216;
      const r = Math.floor(s);
      const d = s - r;
      h = d > 0.5 || (d === 0.5 && (r & 1) === 1) ? r + 1 : r;
    } else {
      // normal: rebias exponent (127 -> 15) and round the 23-bit mantissa to 10 bits
      const rounded = abs + 0xfff + ((abs >>> 13) & 1);
      h = (rounded >>> 13) - ((127 - 15) << 10);
    }
    dst[i] = sign | h;
  }
  return dst;
}

// ---------------------------------------------------------------- helpers

/** Rounds a value to the given float dtype (what torch does when it stores an op's result). */
export function roundToDType(x: number, dtype: 'F32' | 'BF16' | 'F16'): number {
  if (dtype === 'BF16') return roundBf16(x);
  if (dtype === 'F16') return f16ToF32(f32ToF16(x));
  return Math.fround(x);
}

/** Decodes raw little-endian bytes of a float tensor to a new Float32Array. */
export function decodeToFloat32(bytes: Uint8Array, dtype: DType, what = 'tensor'): Float32Array {
  const n = bytes.length;
  if (dtype === 'F32') {
    const out = new Float32Array(n / 4);
    new Uint8Array(out.buffer).set(bytes);
    return out;
  }
  if (dtype === 'BF16' || dtype === 'F16') {
    const u16 = new Uint16Array(n / 2);
    new Uint8Array(u16.buffer).set(bytes);
    return dtype === 'BF16' ? bf16ToF32Array(u16) : f16ToF32Array(u16);
  }
  throw new QuantizationError(`${what}: dtype ${dtype} is not a float dtype rxquant can read as f32`);
}

/** Encodes f32 values into raw bytes of the given float dtype (RNE). */
export function encodeFromFloat32(values: Float32Array, dtype: 'F32' | 'BF16' | 'F16'): Uint8Array {
  if (dtype === 'F32') return new Uint8Array(values.buffer.slice(values.byteOffset, values.byteOffset + values.byteLength));
  const out = dtype === 'BF16' ? f32ToBf16Array(values) : f32ToF16Array(values);
  return new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
}
