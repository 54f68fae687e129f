/**
 * One decoder layer of the dense families (Llama, Qwen2, Qwen3, Mistral), as transformers runs it
 * in eager f32 mode. Hooks see every linear's input (calibration statistics) and the post-RoPE keys
 * and values (KV-cache scales).
 */
import type { ModelConfig } from '../models/config.js';
import { matmul, rmsnorm, silu, softmaxRows } from './ops.js';
import { applyRope } from './rope.js';

/** A linear as the forward pass uses it: f32 weight [N, K], optional bias, optional input transform. */
export interface LinearWeights {
  w: Float32Array;
  N: number;
  K: number;
  b?: Float32Array;
  /** Applied to the input before the matmul: pre_quant_scale and activation fake-quantization of an export. */
  input?: (x: Float32Array, T: number) => Float32Array;
}

export interface LayerWeights {
  q: LinearWeights;
  k: LinearWeights;
  v: LinearWeights;
  o: LinearWeights;
  gate: LinearWeights;
  up: LinearWeights;
  down: LinearWeights;
  inputNorm: Float32Array;
  postNorm: Float32Array;
  /** Qwen3: RMSNorm over each head of q and k, before RoPE. */
  qNorm?: Float32Array;
  kNorm?: Float32Array;
}

export type LinearName = 'q' | 'k' | 'v' | 'o' | 'gate' | 'up' | 'down';

export interface LayerHooks {
  /** Input of a linear, [T, K]; q/k/v share one input (and gate/up), reported once per linear. */
  linearInput?(name: LinearName, x: Float32Array, T: number, K: number): void;
  /** Keys after RoPE [T, kvHeads*d] and values [T, kvHeads*d]. */
  keysValues?(k: Float32Array, v: Float32Array, T: number): void;
}

/** f32 min: transformers' additive mask value for positions a query may not attend to. */
const MASKED = -3.4028234663852886e38;

function linear(l: LinearWeights, x: Float32Array, T: number): Float32Array {
  const xin = l.input ? l.input(x, T) : x;
  return matmul(xin, T, l.K, l.w, l.N, l.b);
}

/**
 * h [T, H] -> h' [T, H] for one sequence. `valid[t] = 0` marks a padding token (its key is masked).
 * cos/sin: [T, headDim] RoPE tables.
 */
export function decoderLayer(
  h: Float32Array,
  T: number,
  lw: LayerWeights,
  cfg: ModelConfig,
  cos: Float32Array,
  sin: Float32Array,
  hooks: LayerHooks = {},
  valid?: Uint8Array,
): Float32Array {
  const H = cfg.hiddenSize, d = cfg.headDim, nH = cfg.numHeads, nKV = cfg.numKvHeads;
  // --- attention block
  const x = rmsnorm(h, T, H, lw.inputNorm, cfg.rmsNormEps); // [T, H]
  for (const n of ['q', 'k', 'v'] as const) hooks.linearInput?.(n, x, T, H);
  const q = linear(lw.q, x, T); // [T, nH*d]
  const k = linear(lw.k, x, T); // [T, nKV*d]
  const v = linear(lw.v, x, T); // [T, nKV*d]
  if (lw.qNorm) rmsnorm(q, T * nH, d, lw.qNorm, cfg.rmsNormEps, q);
  if (lw.kNorm) rmsnorm(k, T * nKV, d, lw.kNorm, cfg.rmsNormEps, k);
  applyRope(q, T, nH, d, cos, sin);
  applyRope(k, T, nKV, d, cos, sin);
  hooks.keysValues?.(k, v, T);
  const att = new Float32Array(T * nH * d); // [T, nH*d]
  const scores = new Float32Array(T * T);
  const scale = 1 / Math.sqrt(d);
  const group = nH / nKV;
  for (let hh = 0; hh < nH; hh++) {
    const kvh = Math.floor(hh / group);
    for (let i = 0; i < T; i++) {
      const qo = (i * nH + hh) * d;
      for (let j = 0; j < T; j++) {
        if (j > i || (valid && !valid[j])) {
          scores[i * T + j] = MASKED;
          continue;
        }
        const ko = (j * nKV + kvh) * d;
        let s = 0;
        for (let e = 0; e < d; e++) s += q[qo + e]! * k[ko + e]!;
        scores[i * T + j] = s * scale;
      }
    }
    softmaxRows(scores, T, T);
    for (let i = 0; i < T; i++) {
      const oo = (i * nH + hh) * d;
      for (let j = 0; j < T; j++) {
        const p = scores[i * T + j]!;
        if (p === 0) continue;
        const vo = (j * nKV + kvh) * d;
        for (let e = 0; e < d; e++) att[oo + e] = att[oo + e]! + p * v[vo + e]!;
      }
    }
  }
  hooks.linearInput?.('o', att, T, nH * d);
  const o = linear(lw.o, att, T); // [T, H]
  const h1 = new Float32Array(T * H);
  for (let i = 0; i < h1.length; i++) h1[i] = h[i]! + o[i]!;
  // --- MLP block (SwiGLU)
  const x2 = rmsnorm(h1, T, H, lw.postNorm, cfg.rmsNormEps);
  hooks.linearInput?.('gate', x2, T, H);
  hooks.linearInput?.('up', x2, T, H);
  const g = linear(lw.gate, x2, T); // [T, I]
  const u = linear(lw.up, x2, T); // [T, I]
  for (let i = 0; i < g.length; i++) g[i] = Math.fround(silu(g[i]!)) * u[i]!;
  hooks.linearInput?.('down', g, T, cfg.intermediateSize);
  const dn = linear(lw.down, g, T); // [T, H]
  for (let i = 0; i < h1.length; i++) h1[i] = h1[i]! + dn[i]!;
  return h1;
}
