/**
 * INT4 AWQ weights (W4A16_AWQ and W4A8_AWQ, spec §6.8-6.9), group 128 along K:
 *   weight_scale[n, g] = blockAmax / 7; 0 -> 1                     (f32 [N, K/128])
 *   q[n, k]            = clamp(rne(W / weight_scale[n, k/128]), -8, 7)   (f32 division)
 *   weight             = pairs of output rows, row 2i low nibble   (uint8 [N/2, K], done by pack())
 * W4A8 adds weight_scale_2 = amax(W) / 448 (a scalar, shared across a fused group).
 */
import { rne } from '../codecs/float.js';
import { exportScale } from './common.js';

export const INT4_GROUP = 128;

/** max |w| of each 128-wide group of each row: [N, K/128]. */
function groupAmaxes(w: Float32Array, N: number, K: number): Float32Array {
  const ng = K / INT4_GROUP;
  const amax = new Float32Array(N * ng);
  for (let n = 0; n < N; n++)
    for (let g = 0; g < ng; g++) {
      let m = 0;
      const base = n * K + g * INT4_GROUP;
      for (let i = 0; i < INT4_GROUP; i++) {
        const a = Math.abs(w[base + i]!);
        if (a > m) m = a;
      }
      amax[n * ng + g] = m;
    }
  return amax;
}

export function int4Scales(w: Float32Array, N: number, K: number): Float32Array {
  return groupAmaxes(w, N, K).map((m) => exportScale(m, 7));
}

/**
 * AWQ-clip's scales (spec §11.4): each group's amax times its clip ratio (f32), then / 7 as
 * int4Scales (a zero amax gives 1). `ratios` [N, K/128].
 */
export function int4ScalesClipped(w: Float32Array, N: number, K: number, ratios: Float32Array): Float32Array {
  return groupAmaxes(w, N, K).map((m, i) => exportScale(Math.fround(m * ratios[i]!), 7));
}

/** Reference: a plain loop. Returns q [N, K] in [-8, 7]; `packInt4Rows` makes the stored layout. */
export function quantizeInt4Ref(w: Float32Array, N: number, K: number, scales: Float32Array): Int8Array {
  const ng = K / INT4_GROUP;
  const q = new Int8Array(N * K);
  for (let n = 0; n < N; n++)
    for (let k = 0; k < K; k++) {
      const v = Math.fround(w[n * K + k]! / scales[n * ng + Math.floor(k / INT4_GROUP)]!);
      const r = v < 0 ? -rne(-v) : rne(v);
      q[n * K + k] = Math.min(7, Math.max(-8, r));
    }
  return q;
}

/** Fast: one division per element, rounding without a helper call per tie. */
export function quantizeInt4(w: Float32Array, N: number, K: number, scales: Float32Array, out: Int8Array = new Int8Array(N * K)): Int8Array {
  const ng = K / INT4_GROUP;
  for (let n = 0; n < N; n++) {
    const row = n * K;
    for (let g = 0; g < ng; g++) {
      const s = scales[n * ng + g]!;
      const end = row + (g + 1) * INT4_GROUP;
      for (let i = row + g * INT4_GROUP; i < end; i++) out[i] = q4(Math.fround(w[i]! / s));
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

/** Dequantizes q [N, K] (as unpackInt4Rows gives it). */
export function dequantizeInt4(q: Int8Array, N: number, K: number, scales: Float32Array): Float32Array {
  const ng = K / INT4_GROUP;
  const out = new Float32Array(N * K);
  for (let n = 0; n < N; n++)
    for (let k = 0; k < K; k++) out[n * K + k] = Math.fround(q[n * K + k]! * scales[n * ng + ((k / INT4_GROUP) | 0)]!);
  return out;
}

/**
 * Quantize-then-dequantize of w [N, K] in place, one 128-group at a time (what `int4Scales`,
 * `quantizeInt4` and `dequantizeInt4` give, bit for bit, without their arrays): the AWQ search's
 * candidates. `table`, when given, maps each group's scale to the 16 values an engine computes for
 * q = -8..7 (W4A8's FP8 re-expression); otherwise the value is q · scale.
 */
export function fakeQuantizeInt4InPlace(w: Float32Array, N: number, K: number, table?: (scale: number, out: Float32Array) => void, clip = 1): Float32Array {
  const values = new Float32Array(16);
  for (let base = 0; base < N * K; base += INT4_GROUP) {
    let m = 0;
    for (let i = base; i < base + INT4_GROUP; i++) {
      const a = Math.abs(w[i]!);
      if (a > m) m = a;
    }
    const s = exportScale(clip === 1 ? m : Math.fround(m * clip), 7);
    if (table) {
      table(s, values);
      for (let i = base; i < base + INT4_GROUP; i++) w[i] = values[rneClamp4(Math.fround(w[i]! / s)) + 8]!;
    } else for (let i = base; i < base + INT4_GROUP; i++) w[i] = rneClamp4(Math.fround(w[i]! / s)) * s; // the store rounds q · s to f32
  }
  return w;
}

/** 1.5 · 2^52: adding and subtracting it rounds an f64 of magnitude below 2^51 to the nearest integer, ties to even. */
const RNE_MAGIC = 6755399441055744;

/** rne(v) clamped to [-8, 7], branch-light (q4's result for every finite v). */
function rneClamp4(v: number): number {
  const r = v + RNE_MAGIC - RNE_MAGIC;
  return r > 7 ? 7 : r < -8 ? -8 : r;
}
