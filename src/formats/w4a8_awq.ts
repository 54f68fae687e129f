/**
 * The `w4a8_awq` export format (quant_algo "W4A8_AWQ", spec §6.9): int4_awq's weights plus
 * `weight_scale_2` = amax(W) / 448 (shared across fused siblings) and FP8 activations with
 * `input_scale` = input amax / 448. TensorRT-LLM computes with int4 × (weight_scale / weight_scale_2)
 * rounded to e4m3, times weight_scale_2, which is what `dequantize` gives.
 */
import { unpackInt4Rows } from '../codecs/int4.js';
import { E4M3_VALUES, e4m3Encode } from '../codecs/e4m3.js';
import { f32Array, type QuantFormat } from './format.js';
import { INT4_GROUP, fakeQuantizeInt4InPlace } from './int4.js';
import { amaxOf } from './common.js';
import { FP8_MAX } from './fp8.js';
import { int4_awq } from './int4_awq.js';

/** What TensorRT-LLM computes with: int4 x e4m3(weight_scale / weight_scale_2), times weight_scale_2. */
function dequantizeW4a8(q: Int8Array, ws: Float32Array, N: number, K: number, ws2: number): Float32Array {
  const ng = K / INT4_GROUP;
  const w = new Float32Array(N * K);
  for (let i = 0; i < N * K; i++) {
    const s = Math.fround(ws[Math.floor(i / K) * ng + Math.floor((i % K) / INT4_GROUP)]! / ws2);
    w[i] = Math.fround(E4M3_VALUES[e4m3Encode(Math.fround(q[i]! * s))]! * ws2);
  }
  return w;
}

/** dequantizeW4a8 of the int4 quantization of w, in place: per group, the 16 values q = -8..7 map to. */
function fakeQuantizeW4a8InPlace(w: Float32Array, N: number, K: number, amax: number): Float32Array {
  const ws2 = w4a8_awq.tensorScales(amax).weightScale2!;
  return fakeQuantizeInt4InPlace(w, N, K, (scale, out) => {
    const s = Math.fround(scale / ws2);
    for (let q = -8; q < 8; q++) out[q + 8] = Math.fround(E4M3_VALUES[e4m3Encode(Math.fround(q * s))]! * ws2);
  });
}

export const w4a8_awq: QuantFormat = {
  ...int4_awq,
  name: 'w4a8_awq',
  quantAlgo: 'W4A8_AWQ',
  inputScaleDivisor: FP8_MAX,
  description: 'INT4 weights (group 128) with AWQ pre-quant scales, FP8 activations',
  needsWeightAmax: true,
  tensorScales: (amax) => ({ weightScale2: amax === 0 ? 1 : Math.fround(amax / FP8_MAX) }),
  scalars: ['weight_scale_2', 'input_scale'],
  dequantize: (weight, shape, scale, ws2) => {
    const N = shape[0]! * 2, K = shape[1]!;
    return { w: dequantizeW4a8(unpackInt4Rows(weight, N, K), f32Array(scale), N, K, ws2!), N, K };
  },
  activation: 'fp8',
  fakeQuantize: (w, N, K) => fakeQuantizeW4a8InPlace(w.slice(), N, K, amaxOf(w)),
  fakeQuantizeInPlace: (w, N, K, amax) => fakeQuantizeW4a8InPlace(w, N, K, amax),
  // ModelOpt's awq() re-runs max calibration on both stages of W4A8's weight quantizer after the
  // search, which undoes any clipping: awq_clip changes nothing here
  awqClip: undefined,
  engines: [
    { engine: 'vLLM', loads: false, note: "the AWQ family is not in vLLM's ModelOpt loader" },
    { engine: 'SGLang', loads: false, note: 'not supported' },
    { engine: 'TensorRT-LLM', loads: true, note: 'SM89+ (FP8 activations)' },
  ],
};
