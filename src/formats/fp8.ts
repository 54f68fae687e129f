/**
 * FP8 per-tensor (quant_algo "FP8", spec §6.1):
 *   weight_scale = amax(W) / 448                       (f32 scalar)
 *   weight       = e4m3( dtype( W / weight_scale ) )   (torch CPU: a bf16 tensor divided by a 0-d f32 stays bf16)
 * The quotient is rounded to the weight's own dtype before the e4m3 cast; for f32 weights that is a no-op.
 */
import { e4m3EncodeRef, e4m3Encode, E4M3_VALUES } from '../codecs/e4m3.js';
import { bf16ToF32, roundToDType, f16ToF32 } from '../codecs/float.js';
import type { FloatDType } from '../safetensors/dtypes.js';
import { bytesOf, f32Scalar, noBlockers, unpackedShape, type QuantFormat } from './format.js';

export const FP8_MAX = 448;

/** weight_scale for a per-tensor amax. An all-zero weight gets 1 (ModelOpt would write 0 and NaN weights; §15.12). */
export function fp8WeightScale(amax: number): number {
  return amax === 0 ? 1 : Math.fround(amax / FP8_MAX);
}

/** Reference: one element at a time, with the scalar reference encoder. */
export function quantizeFp8Ref(w: Float32Array, scale: number, dtype: FloatDType): Uint8Array {
  const out = new Uint8Array(w.length);
  for (let i = 0; i < w.length; i++) out[i] = e4m3EncodeRef(roundToDType(Math.fround(w[i]! / scale), dtype));
  return out;
}

/** Fast: f32-valued input with the bit-twiddling encoder. */
export function quantizeFp8(w: Float32Array, scale: number, dtype: FloatDType, out: Uint8Array = new Uint8Array(w.length)): Uint8Array {
  if (dtype === 'F32') {
    for (let i = 0; i < w.length; i++) out[i] = e4m3Encode(Math.fround(w[i]! / scale));
  } else {
    for (let i = 0; i < w.length; i++) out[i] = e4m3Encode(roundToDType(Math.fround(w[i]! / scale), dtype));
  }
  return out;
}

/**
 * Fastest for bf16 weights: a 65,536-entry table over the bf16 bit patterns absorbs the scale,
 * the division and both roundings (node-performance §2: bit-exact for any per-tensor formula).
 */
export function fp8LutForBf16(scale: number): Uint8Array {
  return fp8Lut16(scale, 'BF16');
}

/** The same table over f16 bit patterns (the quotient rounded to f16, as torch keeps an f16 tensor's dtype). */
export function fp8LutForF16(scale: number): Uint8Array {
  return fp8Lut16(scale, 'F16');
}

function fp8Lut16(scale: number, dtype: 'BF16' | 'F16'): Uint8Array {
  const value = dtype === 'BF16' ? bf16ToF32 : f16ToF32;
  const lut = new Uint8Array(65536);
  for (let b = 0; b < 65536; b++) lut[b] = e4m3Encode(roundToDType(Math.fround(value(b) / scale), dtype));
  return lut;
}

/** Codes of bf16 or f16 weights (their bit patterns) through a table of fp8LutForBf16 or fp8LutForF16. */
export function quantizeFp8Lut16(bits: Uint16Array, lut: Uint8Array, out: Uint8Array = new Uint8Array(bits.length)): Uint8Array {
  for (let i = 0; i < bits.length; i++) out[i] = lut[bits[i]!]!;
  return out;
}

export function dequantizeFp8(q: Uint8Array, scale: number, out = new Float32Array(q.length)): Float32Array {
  for (let i = 0; i < q.length; i++) out[i] = Math.fround(E4M3_VALUES[q[i]!]! * scale);
  return out;
}

/** The `fp8` export format (quant_algo "FP8"): e4m3 weights and activations, per-tensor scales. */
export const fp8: QuantFormat = {
  name: 'fp8',
  quantAlgo: 'FP8',
  awq: false,
  inputScaleDivisor: FP8_MAX,
  kMultiple: 1,
  evenRows: false,
  unifyGroups: false,
  foldsIntoPreviousLinear: false,
  description: 'FP8 E4M3 weights and activations, per-tensor scales',
  kernel: 'fp8',
  rowMultiple: 1,
  needsWeightAmax: true,
  tensorScales: (amax) => ({ weightScale: fp8WeightScale(amax) }),
  kernelScale: (s) => s.weightScale!,
  streamedTensors: (m, N, K) => [{ name: `${m}.weight`, dtype: 'F8_E4M3', shape: [N, K] }],
  scalars: ['weight_scale', 'input_scale'],
  packChunk: (m, K, c) => [{ name: `${m}.weight`, offset: c.row0 * K, data: bytesOf(c.codes) }],
  checkStored: (m, w) => ({ failures: w.dtype === 'F8_E4M3' ? [] : [`${m}.weight must be F8_E4M3, is ${w.dtype}`], checkBlockScales: false }),
  dequantize: (weight, shape, scale) => {
    const [N, K] = shape as [number, number];
    return { w: dequantizeFp8(weight, f32Scalar(scale)), N, K };
  },
  activation: 'fp8',
  fused: {
    // no transpose: weight / scale elementwise on the [E, A, B] parameter (to_quantized_weight's 3-D branch)
    layout: 'rows',
    streamedTensors: (m, E, A, B) => [{ name: m, dtype: 'F8_E4M3', shape: [E, A, B] }],
    packChunk: (m, _E, _A, B, c) => [{ name: m, offset: c.row0 * B, data: bytesOf(c.codes) }],
  },
  configGroups: () => {
    const fp8 = () => ({ dynamic: false, num_bits: 8, type: 'float' });
    return { group_0: { input_activations: fp8(), weights: fp8(), targets: ['Linear'] } };
  },
  logicalShape: unpackedShape,
  loadBlockers: noBlockers,
  engines: [
    { engine: 'vLLM', loads: true, note: '>= 0.10.1; FP8 GEMMs need SM89+ (Ada/Hopper), emulated on SM80 in recent releases' },
    { engine: 'SGLang', loads: true, note: '>= 0.4.10; SM89+' },
    { engine: 'TensorRT-LLM', loads: true, note: '>= 1.2.0; SM89+' },
  ],
};
