/**
 * NVFP4 (quant_algo "NVFP4", group 16, spec §6.4):
 *   weight_scale_2 = amax(W) / 2688                                  (f32 scalar; shared across a fused group)
 *   s[n, b]        = blockAmax / (6 * weight_scale_2); 0 -> 1        (f32)
 *   weight_scale   = e4m3( clamp(s, 2^-9, 448) )                     (float8_e4m3fn [N, K/16])
 *   q[n, k]        = e2m1( W / (f32(weight_scale) * weight_scale_2) ) (f32 math, RNE, saturate at 6)
 *   weight         = q packed two per byte along K, even k low        (uint8 [N, K/2], done by pack())
 * The kernels return one e2m1 code per element; `packNibblesK` makes the stored layout.
 */
import { e4m3EncodeRef, e4m3Encode, E4M3_VALUES } from '../codecs/e4m3.js';
import { e2m1EncodeRef, e2m1Encode, E2M1_VALUES, packNibblesK, unpackNibblesK } from '../codecs/e2m1.js';
import { bytesOf, noBlockers, sameShape, type QuantFormat } from './format.js';
import { bf16ToF32, f16ToF32 } from '../codecs/float.js';

export const NVFP4_GROUP = 16;
export const NVFP4_MAXBOUND = 6 * 448; // 2688

/** Global (per-tensor) scale: amax / 2688, f32. A zero amax gives 1 (no zero scales reach an engine). */
export function nvfp4GlobalScale(amax: number): number {
  return amax === 0 ? 1 : Math.fround(amax / NVFP4_MAXBOUND);
}

function blockScaleValue(blockAmax: number, sixWs2: number): number {
  let s = Math.fround(blockAmax / sixWs2);
  if (s === 0) s = 1;
  return Math.min(448, Math.max(2 ** -9, s));
}

/** Reference: per-element with the scalar reference encoders; returns e2m1 codes and e4m3 block scales. */
export function quantizeNvfp4Ref(w: Float32Array, N: number, K: number, ws2: number): { codes: Uint8Array; scales: Uint8Array } {
  const G = NVFP4_GROUP;
  const nb = K / G;
  const scales = new Uint8Array(N * nb);
  const codes = new Uint8Array(N * K);
  const sixWs2 = Math.fround(6 * ws2);
  for (let n = 0; n < N; n++)
    for (let b = 0; b < nb; b++) {
      let m = 0;
      for (let k = b * G; k < (b + 1) * G; k++) m = Math.max(m, Math.abs(w[n * K + k]!));
      const sb = e4m3EncodeRef(blockScaleValue(m, sixWs2));
      scales[n * nb + b] = sb;
      const div = Math.fround(E4M3_VALUES[sb]! * ws2);
      for (let k = b * G; k < (b + 1) * G; k++) codes[n * K + k] = e2m1EncodeRef(Math.fround(w[n * K + k]! / div));
    }
  return { codes, scales };
}

/** Fast: one pass per 16-element block with the branch-free encoders. Rows [0, N) of w. */
export function quantizeNvfp4(
  w: Float32Array,
  N: number,
  K: number,
  ws2: number,
  codes: Uint8Array = new Uint8Array(N * K),
  scales: Uint8Array = new Uint8Array((N * K) / NVFP4_GROUP),
): { codes: Uint8Array; scales: Uint8Array } {
  const sixWs2 = Math.fround(6 * ws2);
  const total = N * K;
  for (let base = 0, b = 0; base < total; base += NVFP4_GROUP, b++) {
    let m = 0;
    for (let i = 0; i < NVFP4_GROUP; i++) {
      const a = Math.abs(w[base + i]!);
      if (a > m) m = a;
    }
    const sb = e4m3Encode(blockScaleValue(m, sixWs2));
    scales[b] = sb;
    const div = Math.fround(E4M3_VALUES[sb]! * ws2);
    for (let i = base; i < base + NVFP4_GROUP; i++) codes[i] = e2m1Encode(Math.fround(w[i]! / div));
  }
  return { codes, scales };
}

/**
 * Quantize-then-dequantize of w [N, K] in place under the global scale ws2, one 16-block at a time
 * (what `quantizeNvfp4` then `dequantizeNvfp4` give, equal as numbers (+0 where they give -0), without
 * their arrays): the AWQ search's candidates.
 */
export function fakeQuantizeNvfp4InPlace(w: Float32Array, N: number, K: number, ws2: number): Float32Array {
  const sixWs2 = Math.fround(6 * ws2);
  for (let base = 0; base < N * K; base += NVFP4_GROUP) {
    let m = 0;
    for (let i = base; i < base + NVFP4_GROUP; i++) {
      const a = Math.abs(w[i]!);
      if (a > m) m = a;
    }
    const div = Math.fround(E4M3_VALUES[e4m3Encode(blockScaleValue(m, sixWs2))]! * ws2);
    for (let i = base; i < base + NVFP4_GROUP; i++) {
      // e2m1Encode's thresholds, inlined: the magnitude's index, then the sign as arithmetic (a branch
      // on a random sign runs 3x slower); a negative that rounds to zero gives +0 here, -0 there
      const v = Math.fround(w[i]! / div);
      const a = Math.abs(v);
      const mag = E2M1_MAGNITUDES[+(a > 0.25) + +(a >= 0.75) + +(a > 1.25) + +(a >= 1.75) + +(a > 2.5) + +(a >= 3.5) + +(a > 5)]!;
      w[i] = (mag - 2 * +(v < 0) * mag) * div;
    }
  }
  return w;
}

/** The e2m1 magnitudes by code 0..7. */
const E2M1_MAGNITUDES = E2M1_VALUES.slice(0, 8);

/** Dequantizes codes (one per element, as unpackNibblesK gives them). */
export function dequantizeNvfp4(codes: Uint8Array, scales: Uint8Array, N: number, K: number, ws2: number): Float32Array {
  const out = new Float32Array(N * K);
  for (let i = 0; i < N * K; i++) {
    const code = codes[i]!;
    const s = Math.fround(E4M3_VALUES[scales[(i / NVFP4_GROUP) | 0]!]! * ws2);
    out[i] = Math.fround(E2M1_VALUES[code]! * s);
  }
  return out;
}

/** Bytes of `nvfp4TablesForBf16`: the scale table, then 128 rows of 8 i16 thresholds. */
export const NVFP4_SCALE_TABLE = 32768;
export const NVFP4_TABLES_BYTES = NVFP4_SCALE_TABLE + 128 * 16;
/** A threshold no |bf16| bits exceed (as signed i16): "never". */
const NEVER = 0x7fff;

/**
 * NVFP4 of bf16 weights as table lookups and compares, for the SIMD kernel (spec §6.4's formula, not
 * an approximation of it). Under one global scale ws2:
 *  - bytes [0, 32768): the e4m3 block-scale code of a block whose max |bf16 bits| is i;
 *  - then for each scale code c (128 rows of 8 i16): with d = f32(e4m3(c)) * ws2, the e2m1 magnitude
 *    of x is the number of thresholds t[0..6] with |x bits| > t[k], and the sign bit is set when x is
 *    negative and |x bits| > t[7]. Both hold exactly because |x| / d, rounded to f32 and then to
 *    e2m1, never decreases as |x| grows, and bf16 magnitudes order like their bits; so each threshold
 *    is found by bisection with the same scalar formula `quantizeNvfp4` uses (the sign one is where
 *    -|x| / d stops rounding to -0.0, which e2m1 encodes as +0).
 */
export function nvfp4TablesForBf16(ws2: number, out: Uint8Array = new Uint8Array(NVFP4_TABLES_BYTES)): Uint8Array {
  return nvfp4Tables16(ws2, bf16ToF32, 0x7f80, out);
}

/** nvfp4TablesForBf16 over f16 bit patterns (f16 magnitudes order like their bits too). */
export function nvfp4TablesForF16(ws2: number, out: Uint8Array = new Uint8Array(NVFP4_TABLES_BYTES)): Uint8Array {
  return nvfp4Tables16(ws2, f16ToF32, 0x7c00, out);
}

/** The tables over the bit patterns of a 16-bit sign-magnitude float (`value` decodes one; `inf` is +infinity's bits). */
function nvfp4Tables16(ws2: number, value: (bits: number) => number, inf: number, out: Uint8Array): Uint8Array {
  const sixWs2 = Math.fround(6 * ws2);
  for (let i = 0; i < NVFP4_SCALE_TABLE; i++) out[i] = e4m3Encode(blockScaleValue(value(i), sixWs2));
  const thr = new Int16Array(out.buffer, out.byteOffset + NVFP4_SCALE_TABLE, 128 * 8);
  for (let c = 0; c < 128; c++) {
    const div = Math.fround(E4M3_VALUES[c]! * ws2);
    const mag = (bits: number) => e2m1Encode(Math.fround(value(bits) / div)) & 7;
    for (let k = 1; k <= 7; k++) thr[c * 8 + k - 1] = firstFinite((bits) => mag(bits) >= k, inf) - 1;
    thr[c * 8 + 7] = firstFinite((bits) => e2m1Encode(Math.fround(-value(bits) / div)) >= 8, inf) - 1;
  }
  return out;
}

/** The smallest finite magnitude bit pattern (below `inf`) where a monotone predicate holds, or NEVER + 1. */
function firstFinite(holds: (bits: number) => boolean, inf: number): number {
  let lo = 0, hi = inf; // the answer is in [lo, hi]; hi = inf means none
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (holds(mid)) hi = mid;
    else lo = mid + 1;
  }
  return hi === inf ? NEVER + 1 : hi;
}

/** The `nvfp4` export format (quant_algo "NVFP4", group 16): e2m1 weights and activations. */
export const nvfp4: QuantFormat = {
  name: 'nvfp4',
  quantAlgo: 'NVFP4',
  groupSize: NVFP4_GROUP,
  awq: false,
  inputScaleDivisor: NVFP4_MAXBOUND,
  kMultiple: NVFP4_GROUP,
  evenRows: false,
  unifyGroups: true,
  foldsIntoPreviousLinear: false,
  description: 'NVFP4 (E2M1 weights and activations, E4M3 scales per 16, f32 global scale)',
  kernel: 'nvfp4',
  rowMultiple: 1,
  needsWeightAmax: true,
  tensorScales: (amax) => ({ weightScale2: nvfp4GlobalScale(amax) }),
  kernelScale: (s) => s.weightScale2!,
  streamedTensors: (m, N, K) => [
    { name: `${m}.weight`, dtype: 'U8', shape: [N, K / 2] },
    { name: `${m}.weight_scale`, dtype: 'F8_E4M3', shape: [N, K / NVFP4_GROUP] },
  ],
  scalars: ['weight_scale_2', 'input_scale'],
  packChunk: (m, K, c) => [
    // two e2m1 codes per byte along K, even k in the low nibble
    { name: `${m}.weight`, offset: (c.row0 * K) / 2, data: c.packed ?? packNibblesK(c.codes as Uint8Array, c.slot.packed.subarray(0, (c.rows * K) / 2)) },
    { name: `${m}.weight_scale`, offset: (c.row0 * K) / NVFP4_GROUP, data: bytesOf(c.scales!) },
  ],
  checkStored: (m, w, ws) => {
    const failures: string[] = [];
    if (w.dtype !== 'U8') failures.push(`${m}.weight must be U8 (two e2m1 per byte), is ${w.dtype}`);
    const [a, b] = w.shape as [number, number];
    const K = b * 2;
    if (K % NVFP4_GROUP !== 0) failures.push(`${m}: in_features ${K} is not a multiple of 16`);
    const scaleOk = ws.dtype === 'F8_E4M3' && sameShape(ws.shape, [a, K / NVFP4_GROUP]);
    if (!scaleOk) failures.push(`${m}.weight_scale must be F8_E4M3 [${a}, ${K / NVFP4_GROUP}], is ${ws.dtype} [${ws.shape.join(', ')}]`);
    return { failures, checkBlockScales: scaleOk };
  },
  dequantize: (weight, shape, scale, scale2) => {
    const N = shape[0]!, K = shape[1]! * 2;
    return { w: dequantizeNvfp4(unpackNibblesK(weight), scale, N, K, scale2!), N, K };
  },
  activation: 'nvfp4',
  fused: {
    // quantized along A per expert and stored transposed back (maybe_transpose_expert_weight_dimensions):
    // weight U8 [E, A/2, B], byte [e, j, n] = code(W[e, 2j, n]) | code(W[e, 2j+1, n]) << 4;
    // weight_scale F8 [E, A/16, B], block [e, b, n] covers W[e, 16b..16b+15, n]
    layout: 'bands',
    streamedTensors: (m, E, A, B) => [
      { name: m, dtype: 'U8', shape: [E, A / 2, B] },
      { name: `${m}_weight_scale`, dtype: 'F8_E4M3', shape: [E, A / NVFP4_GROUP, B] },
    ],
    packChunk: (m, _E, A, B, c) => {
      const { expert, a0, a1 } = c.band!;
      const band = a1 - a0;
      // the kernel's output is [B, band/2] packed codes and [B, band/16] scales: transpose both to [., B]
      const packed = c.packed ?? packNibblesK(c.codes as Uint8Array, c.slot.packed.subarray(0, (B * band) / 2));
      const scales = c.scales as Uint8Array;
      const pw = band / 2, sw = band / NVFP4_GROUP;
      const w = new Uint8Array(pw * B);
      for (let n = 0; n < B; n++) for (let j = 0; j < pw; j++) w[j * B + n] = packed[n * pw + j]!;
      const s = new Uint8Array(sw * B);
      for (let n = 0; n < B; n++) for (let j = 0; j < sw; j++) s[j * B + n] = scales[n * sw + j]!;
      return [
        { name: m, offset: ((expert * A) / 2 + a0 / 2) * B, data: w },
        { name: `${m}_weight_scale`, offset: ((expert * A) / NVFP4_GROUP + a0 / NVFP4_GROUP) * B, data: s },
      ];
    },
  },
  configGroups: (groupSize) => {
    const fp4 = () => ({ dynamic: false, num_bits: 4, type: 'float', group_size: groupSize ?? NVFP4_GROUP });
    return { group_0: { input_activations: fp4(), weights: fp4(), targets: ['Linear'] } };
  },
  logicalShape: (s) => [s[0]!, s[1]! * 2],
  loadBlockers: noBlockers,
  engines: [
    { engine: 'vLLM', loads: true, note: '>= 0.10.1; W4A4 needs Blackwell (SM100+), else the Marlin weight-only fallback' },
    { engine: 'SGLang', loads: true, note: '>= 0.4.10; Blackwell, or --fp4-gemm-backend marlin on SM80-90' },
    { engine: 'TensorRT-LLM', loads: true, note: '>= 1.2.0; Blackwell (SM100+)' },
  ],
};
