/**
 * A DeepSeek V3 / R1 decoder layer (transformers' DeepseekV3DecoderLayer), eager f32:
 *
 *   x   = input_layernorm(h)                                            [T, H]
 *   MLA: q    = q_b_proj(q_a_layernorm(q_a_proj(x)))  (or q_proj(x))    [T, nH * (nope + rope)]
 *        ckv  = kv_a_proj_with_mqa(x)                                   [T, kvRank + rope]
 *        kv   = kv_b_proj(kv_a_layernorm(ckv[:, :kvRank]))              [T, nH * (nope + v)]
 *        per head: query = [q_nope, rope(q_rope)], key = [k_nope, rope(ckv[:, kvRank:])] (one
 *        rope key shared by all heads), value = kv[.., nope:]; RoPE over the rope part only, its
 *        pairs de-interleaved first when rope_interleave; scale (nope + rope)^-0.5 (times mscale^2
 *        under YaRN with mscale_all_dim)
 *   h   = h + o_proj(attention)                                         [T, nH * v] -> [T, H]
 *   x2  = post_attention_layernorm(h)
 *   dense layers (i < first_k_dense_replace): y = SwiGLU MLP(x2)
 *   MoE layers: scores = sigmoid(x2 @ gate^T) (f32); choice = scores + e_score_correction_bias;
 *               groups ranked by the sum of their 2 best choices, the best topk_group kept (others'
 *               choices set to 0); top-k experts by choice; weights = their scores, divided by their
 *               sum (+1e-20) when norm_topk_prob, times routed_scaling_factor;
 *               y = sum over experts (in index order, on their tokens) of weight * expert(x2)
 *                   + shared_experts(x2)
 *   h   = h + y
 */
import type { DeepseekConfig, ModelConfig } from './config.js';
import type { GemmEngine } from './gemm.js';
import { rmsnorm, silu } from './ops.js';
import { applyRope } from './rope.js';
import { observeShared, swiGluMlp, type LayerHooks, type PreparedGroup } from './layer.js';
import { EXPERT_GROUP_BYTES, expertInto, expertsInGroups, prepareSwiGlu, type SampleStates } from './moe.js';
import { f32, PreparedGroups, type WeightSource } from './weights.js';
import { CheckpointError } from '../errors.js';
import { rowRange } from '../sources/views.js';

export type { DeepseekConfig };

export interface DeepseekLayerNames {
  /** q_proj when q_lora_rank is null. */
  q?: string;
  qA?: string;
  qANorm?: string;
  qB?: string;
  kvA: string;
  kvANorm: string;
  kvB: string;
  o: string;
  inputNorm: string;
  postNorm: string;
  mlp:
    | { kind: 'dense'; gate: string; up: string; down: string }
    | { kind: 'moe'; router: string; bias: string; experts: { gate: string; up: string; down: string }[]; shared: { gate: string; up: string; down: string } };
}

export interface PreparedDeepseekLayer {
  engine: GemmEngine;
  inputNorm: Float32Array;
  postNorm: Float32Array;
  q?: PreparedGroup;
  qA?: PreparedGroup;
  qANorm?: Float32Array;
  qB?: PreparedGroup;
  kvA: PreparedGroup;
  kvANorm: Float32Array;
  kvB: PreparedGroup;
  o: PreparedGroup;
  mlp:
    | { kind: 'dense'; gateUp: PreparedGroup; down: PreparedGroup }
    | { kind: 'moe'; router: Float32Array; bias: Float32Array; experts: { gateUp: PreparedGroup; down: PreparedGroup }[]; shared: { gateUp: PreparedGroup; down: PreparedGroup } };
  release(): Promise<void>;
}

/** Loads a layer for the GEMM engine; `attentionOnly`: the MLA part and the norms, not the MLP. */
export async function loadPreparedDeepseekLayer(src: WeightSource, names: DeepseekLayerNames, cfg: ModelConfig, ds: DeepseekConfig, gemm: GemmEngine, attentionOnly = false): Promise<PreparedDeepseekLayer> {
  const g = new PreparedGroups(src, gemm);
  const group = (ms: string[], dims: [number, number][]) => g.byName(ms, dims);
  const H = cfg.hiddenSize, nH = cfg.numHeads;
  const qk = ds.qkNopeHeadDim + ds.qkRopeHeadDim;
  try {
    const layer: Omit<PreparedDeepseekLayer, 'release'> = {
      engine: gemm,
      inputNorm: await f32(src, names.inputNorm),
      postNorm: await f32(src, names.postNorm),
      kvA: await group([names.kvA], [[ds.kvLoraRank + ds.qkRopeHeadDim, H]]),
      kvANorm: await f32(src, names.kvANorm),
      kvB: await group([names.kvB], [[nH * (ds.qkNopeHeadDim + ds.vHeadDim), ds.kvLoraRank]]),
      o: await group([names.o], [[H, nH * ds.vHeadDim]]),
      mlp: undefined as never,
    };
    if (names.q) layer.q = await group([names.q], [[nH * qk, H]]);
    else {
      layer.qA = await group([names.qA!], [[ds.qLoraRank!, H]]);
      layer.qANorm = await f32(src, names.qANorm!);
      layer.qB = await group([names.qB!], [[nH * qk, ds.qLoraRank!]]);
    }
    const m = names.mlp;
    if (attentionOnly) {
      // no MLP: the caller runs it a part at a time
    } else if (m.kind === 'dense') {
      const I = cfg.intermediateSize;
      layer.mlp = { kind: 'dense', ...(await prepareSwiGlu(g, m, H, I)) };
    } else {
      const I = ds.moeIntermediateSize, S = I * ds.nSharedExperts;
      const experts: { gateUp: PreparedGroup; down: PreparedGroup }[] = [];
      for (const e of m.experts) experts.push(await prepareSwiGlu(g, e, H, I));
      layer.mlp = {
        kind: 'moe',
        router: await f32(src, `${m.router}.weight`),
        bias: await f32(src, m.bias),
        experts,
        shared: await prepareSwiGlu(g, m.shared, H, S),
      };
    }
    return { ...layer, release: () => g.release() };
  } catch (e) {
    await g.release();
    throw e;
  }
}

/** The rope part [T, heads, r] of rows of width `stride` at `offset`: de-interleave the pairs if asked, then rotate_half RoPE. */
function ropePart(x: Float32Array, T: number, heads: number, stride: number, offset: number, r: number, interleave: boolean, cos: Float32Array, sin: Float32Array): void {
  const part = new Float32Array(T * heads * r);
  for (let t = 0; t < T; t++)
    for (let h = 0; h < heads; h++) {
      const src = (t * heads + h) * stride + offset, dst = (t * heads + h) * r;
      // rope_interleave: (x0, x1, x2, x3, ...) -> (x0, x2, ..., x1, x3, ...)
      for (let i = 0; i < r; i++) part[dst + i] = interleave ? x[src + (i < r / 2 ? 2 * i : 2 * (i - r / 2) + 1)]! : x[src + i]!;
    }
  applyRope(part, T, heads, r, cos, sin);
  for (let t = 0; t < T; t++) for (let h = 0; h < heads; h++) x.set(part.subarray((t * heads + h) * r, (t * heads + h + 1) * r), (t * heads + h) * stride + offset);
}

/**
 * Causal attention with key width dk and value width dv per head (no GQA: MLA has a key per head):
 * q, k [T, nH, dk], v [T, nH, dv] -> [T, nH * dv]; softmax in f64 as a plain reference.
 */
function mlaAttention(q: Float32Array, k: Float32Array, v: Float32Array, T: number, nH: number, dk: number, dv: number, scale: number): Float32Array {
  const out = new Float32Array(T * nH * dv);
  const p = new Float64Array(T);
  for (let h = 0; h < nH; h++)
    for (let i = 0; i < T; i++) {
      const qo = (i * nH + h) * dk;
      let m = -Infinity;
      for (let j = 0; j <= i; j++) {
        const ko = (j * nH + h) * dk;
        let s = 0;
        for (let e = 0; e < dk; e++) s += q[qo + e]! * k[ko + e]!;
        p[j] = Math.fround(s * scale);
        if (p[j]! > m) m = p[j]!;
      }
      let sum = 0;
      for (let j = 0; j <= i; j++) sum += (p[j] = Math.exp(p[j]! - m));
      const oo = (i * nH + h) * dv;
      for (let e = 0; e < dv; e++) {
        let acc = 0;
        for (let j = 0; j <= i; j++) acc += p[j]! * v[(j * nH + h) * dv + e]!;
        out[oo + e] = acc / sum;
      }
    }
  return out;
}

/** Top-k experts per token with DeepSeek's group-limited, bias-corrected choice (see the file comment). */
export function deepseekRoute(x: Float32Array, T: number, H: number, router: Float32Array, bias: Float32Array, ds: DeepseekConfig): { tokens: number[]; weights: number[] }[] {
  const E = ds.nRoutedExperts, G = ds.nGroup, per = E / G;
  const routes = Array.from({ length: E }, () => ({ tokens: [] as number[], weights: [] as number[] }));
  const scores = new Float32Array(E), choice = new Float32Array(E);
  const idx = Array.from({ length: E }, (_, e) => e);
  const gIdx = Array.from({ length: G }, (_, g) => g);
  const gScore = new Float32Array(G);
  for (let t = 0; t < T; t++) {
    for (let e = 0; e < E; e++) {
      let s = 0;
      for (let j = 0; j < H; j++) s += x[t * H + j]! * router[e * H + j]!;
      scores[e] = Math.fround(1 / (1 + Math.exp(-Math.fround(s))));
      choice[e] = Math.fround(scores[e]! + bias[e]!);
    }
    for (let g = 0; g < G; g++) {
      const v = Array.from(choice.subarray(g * per, (g + 1) * per)).sort((a, b) => b - a);
      gScore[g] = Math.fround(v[0]! + (v[1] ?? 0));
    }
    gIdx.sort((a, b) => gScore[b]! - gScore[a]! || a - b);
    const keep = new Set(gIdx.slice(0, ds.topkGroup));
    for (let e = 0; e < E; e++) if (!keep.has(Math.floor(e / per))) choice[e] = 0;
    idx.sort((a, b) => choice[b]! - choice[a]! || a - b);
    const top = idx.slice(0, ds.topK);
    let denom = 0;
    for (const e of top) denom = Math.fround(denom + scores[e]!);
    denom = Math.fround(denom + 1e-20);
    for (const e of [...top].sort((a, b) => a - b)) {
      const w = ds.normTopKProb ? Math.fround(scores[e]! / denom) : scores[e]!;
      routes[e]!.tokens.push(t);
      routes[e]!.weights.push(Math.fround(w * ds.routedScalingFactor));
    }
  }
  return routes;
}

/** The MLA half of a layer over h [T, H], written over h (see the file comment). */
async function mlaBlock(
  h: Float32Array,
  T: number,
  layer: Omit<PreparedDeepseekLayer, 'mlp' | 'release' | 'postNorm'>,
  cfg: ModelConfig,
  ds: DeepseekConfig,
  cos: Float32Array,
  sin: Float32Array,
  hooks: LayerHooks,
): Promise<void> {
  const H = cfg.hiddenSize, nH = cfg.numHeads;
  const nope = ds.qkNopeHeadDim, r = ds.qkRopeHeadDim, dv = ds.vHeadDim, dk = nope + r, kvR = ds.kvLoraRank;
  const x = rmsnorm(h, T, H, layer.inputNorm, cfg.rmsNormEps);
  let q: Float32Array;
  if (layer.q) {
    hooks.linearInput?.('q', x, T, H);
    q = ((await layer.q.run(x, T)) as [Float32Array])[0].slice();
  } else {
    hooks.linearInput?.('q_a', x, T, H);
    const qa = ((await layer.qA!.run(x, T)) as [Float32Array])[0];
    const qn = rmsnorm(qa, T, ds.qLoraRank!, layer.qANorm!, cfg.rmsNormEps);
    hooks.linearInput?.('q_b', qn, T, ds.qLoraRank!);
    q = ((await layer.qB!.run(qn, T)) as [Float32Array])[0].slice(); // [T, nH, dk]
  }
  hooks.linearInput?.('kv_a', x, T, H);
  const ckv = ((await layer.kvA.run(x, T)) as [Float32Array])[0].slice(); // [T, kvR + r]
  const kvIn = new Float32Array(T * kvR);
  for (let t = 0; t < T; t++) kvIn.set(ckv.subarray(t * (kvR + r), t * (kvR + r) + kvR), t * kvR);
  const kvn = rmsnorm(kvIn, T, kvR, layer.kvANorm, cfg.rmsNormEps);
  hooks.linearInput?.('kv_b', kvn, T, kvR);
  const kv = ((await layer.kvB.run(kvn, T)) as [Float32Array])[0]; // [T, nH, nope + dv]
  ropePart(q, T, nH, dk, nope, r, ds.ropeInterleave, cos, sin);
  ropePart(ckv, T, 1, kvR + r, kvR, r, ds.ropeInterleave, cos, sin);
  const k = new Float32Array(T * nH * dk), v = new Float32Array(T * nH * dv);
  for (let t = 0; t < T; t++)
    for (let hh = 0; hh < nH; hh++) {
      const o = (t * nH + hh) * (nope + dv);
      k.set(kv.subarray(o, o + nope), (t * nH + hh) * dk);
      k.set(ckv.subarray(t * (kvR + r) + kvR, (t + 1) * (kvR + r)), (t * nH + hh) * dk + nope);
      v.set(kv.subarray(o + nope, o + nope + dv), (t * nH + hh) * dv);
    }
  hooks.keysValues?.(k, v, T);
  const att = mlaAttention(q, k, v, T, nH, dk, dv, ds.attentionScale);
  hooks.linearInput?.('o', att, T, nH * dv);
  const [o] = (await layer.o.run(att, T)) as [Float32Array];
  for (let j = 0; j < h.length; j++) h[j] = h[j]! + o[j]!;
}

/** h [T, H] -> h' [T, H], written over h (see the file comment). */
export async function deepseekDecoderLayer(
  h: Float32Array,
  T: number,
  layer: PreparedDeepseekLayer,
  cfg: ModelConfig,
  ds: DeepseekConfig,
  cos: Float32Array,
  sin: Float32Array,
  hooks: LayerHooks = {},
): Promise<Float32Array> {
  const H = cfg.hiddenSize;
  await mlaBlock(h, T, layer, cfg, ds, cos, sin, hooks);
  // --- MLP
  const x2 = rmsnorm(h, T, H, layer.postNorm, cfg.rmsNormEps);
  let y: Float32Array;
  if (layer.mlp.kind === 'dense') {
    y = (await swiGluMlp(x2, T, H, cfg.intermediateSize, layer.mlp.gateUp, layer.mlp.down, hooks)).slice();
  } else {
    const I = ds.moeIntermediateSize;
    hooks.linearInput?.('router', x2, T, H);
    const routes = deepseekRoute(x2, T, H, layer.mlp.router, layer.mlp.bias, ds);
    y = new Float32Array(T * H);
    for (let e = 0; e < layer.mlp.experts.length; e++) await expertInto(y, x2, H, I, routes[e]!, layer.mlp.experts[e]!, e, hooks);
    const shared = await swiGluMlp(x2, T, H, I * ds.nSharedExperts, layer.mlp.shared.gateUp, layer.mlp.shared.down, hooks, 'shared.');
    for (let j = 0; j < y.length; j++) y[j] = Math.fround(y[j]! + shared[j]!);
  }
  for (let j = 0; j < h.length; j++) h[j] = h[j]! + y[j]!;
  return h;
}

/**
 * One MoE layer over every calibration sample, its weights a part at a time: MLA, router and shared
 * expert first (each sample's normed input, routing and shared output kept), then the routed experts
 * in groups of at most `groupBytes` of f32 weights, each over every sample, then the residual. The
 * same arithmetic in the same order as deepseekDecoderLayer on each sample.
 */
export async function deepseekLayerOverSamples(
  src: WeightSource,
  names: DeepseekLayerNames,
  cfg: ModelConfig,
  ds: DeepseekConfig,
  gemm: GemmEngine,
  states: SampleStates,
  cos: Float32Array,
  sin: Float32Array,
  hooks: LayerHooks = {},
  groupBytes = EXPERT_GROUP_BYTES,
): Promise<void> {
  if (names.mlp.kind !== 'moe') throw new Error('deepseekLayerOverSamples: a dense layer');
  const H = cfg.hiddenSize, I = ds.moeIntermediateSize;
  const experts = names.mlp.experts;
  const xs: Float32Array[] = [], routes: { tokens: number[]; weights: number[] }[][] = [], shareds: Float32Array[] = [];
  // 1. MLA, routing and the shared expert
  const first = await loadPreparedDeepseekLayer(src, { ...names, mlp: { ...names.mlp, experts: [] } }, cfg, ds, gemm);
  try {
    const mlp = first.mlp as Extract<PreparedDeepseekLayer['mlp'], { kind: 'moe' }>;
    for (let i = 0; i < states.count; i++) {
      const T = states.tokens(i);
      const h = await states.get(i);
      await mlaBlock(h, T, first, cfg, ds, cos, sin, hooks);
      await states.set(i, h);
      const x2 = rmsnorm(h, T, H, first.postNorm, cfg.rmsNormEps);
      hooks.linearInput?.('router', x2, T, H);
      routes.push(deepseekRoute(x2, T, H, mlp.router, mlp.bias, ds));
      xs.push(x2);
      shareds.push((await swiGluMlp(x2, T, H, I * ds.nSharedExperts, mlp.shared.gateUp, mlp.shared.down, hooks, 'shared.')).slice());
    }
  } finally {
    await first.release();
    gemm.dropSpareBuffers?.(); // MLA's buffers fit no expert: let them go
  }
  // 2. routed experts, a group at a time, each over every sample
  const ys = xs.map((x) => new Float32Array(x.length));
  await expertsInGroups(src, gemm, experts.length, 3 * I * H * 4, groupBytes, (e, g) => prepareSwiGlu(g, experts[e]!, H, I), async (prepared, e0) => {
    for (let i = 0; i < states.count; i++) {
      for (let j = 0; j < prepared.length; j++) await expertInto(ys[i]!, xs[i]!, H, I, routes[i]![e0 + j]!, prepared[j]!, e0 + j, hooks);
    }
  });
  // 3. residual: h + (routed + shared)
  for (let i = 0; i < states.count; i++) {
    const h = await states.get(i);
    const y = ys[i]!, sh = shareds[i]!;
    for (let j = 0; j < h.length; j++) h[j] = h[j]! + Math.fround(y[j]! + sh[j]!);
    await states.set(i, h);
  }
}

/**
 * A dense layer over every calibration sample with its weights a part at a time (DeepSeek's first
 * layers have an 18432-wide MLP, ~1.6 GB in f32): MLA first; then gate and up in bands of
 * intermediate rows of at most `groupBytes` of f32 weights, each band over every sample, filling
 * each sample's activation silu(gate) * up; then down whole over every sample, and the residual.
 * Each output element is the same dot product as in the whole layer, so the results are the same
 * (bit for bit with the JavaScript GEMM; an engine may tile differently).
 */
export async function deepseekDenseOverSamples(
  src: WeightSource,
  names: DeepseekLayerNames,
  cfg: ModelConfig,
  ds: DeepseekConfig,
  gemm: GemmEngine,
  states: SampleStates,
  cos: Float32Array,
  sin: Float32Array,
  hooks: LayerHooks = {},
  groupBytes = EXPERT_GROUP_BYTES,
): Promise<void> {
  if (names.mlp.kind !== 'dense') throw new Error('deepseekDenseOverSamples: a MoE layer');
  const m = names.mlp;
  const H = cfg.hiddenSize, I = cfg.intermediateSize;
  const xs: Float32Array[] = [];
  // 1. MLA
  const attn = await loadPreparedDeepseekLayer(src, names, cfg, ds, gemm, true);
  try {
    for (let i = 0; i < states.count; i++) {
      const T = states.tokens(i);
      const h = await states.get(i);
      await mlaBlock(h, T, attn, cfg, ds, cos, sin, hooks);
      await states.set(i, h);
      const x2 = rmsnorm(h, T, H, attn.postNorm, cfg.rmsNormEps);
      observeShared(hooks, ['gate', 'up'], x2, T, H);
      xs.push(x2);
    }
  } finally {
    await attn.release();
    gemm.dropSpareBuffers?.(); // MLA's buffers fit nothing that follows: let them go before the MLP
  }
  // 2. gate and up, a band of intermediate rows at a time: act = silu(gate) * up
  const acts = xs.map((x) => new Float32Array((x.length / H) * I));
  const band = Math.max(1, Math.min(I, Math.floor(groupBytes / (2 * H * 4))));
  const gateT = src.tensors.get(`${m.gate}.weight`), upT = src.tensors.get(`${m.up}.weight`);
  if (!gateT || !upT) throw new CheckpointError(src.dir, `tensor "${m.gate}.weight" or "${m.up}.weight" is missing`);
  for (let c0 = 0; c0 < I; c0 += band) {
    const c1 = Math.min(I, c0 + band);
    const part: WeightSource = { ...src, tensors: new Map([['gate#band.weight', rowRange(gateT, c0, c1)], ['up#band.weight', rowRange(upT, c0, c1)]]) };
    const bandGroups = new PreparedGroups(part, gemm);
    try {
      const g = await bandGroups.byName(['gate#band', 'up#band'], [[c1 - c0, H], [c1 - c0, H]], { swiGlu: true });
      for (let i = 0; i < states.count; i++) {
        const T = states.tokens(i), act = acts[i]!, w = c1 - c0;
        if (g.runSwiGlu) {
          const a = await g.runSwiGlu(xs[i]!, T); // [T, w]
          for (let t = 0; t < T; t++) act.set(a.subarray(t * w, (t + 1) * w), t * I + c0);
        } else if (g.runFused) {
          const gu = await g.runFused(xs[i]!, T); // [T, 2w]: gate | up
          for (let t = 0; t < T; t++) for (let j = 0; j < w; j++) act[t * I + c0 + j] = Math.fround(silu(gu[t * 2 * w + j]!)) * gu[t * 2 * w + w + j]!;
        } else {
          const [gg, uu] = (await g.run(xs[i]!, T)) as [Float32Array, Float32Array];
          for (let t = 0; t < T; t++) for (let j = 0; j < w; j++) act[t * I + c0 + j] = Math.fround(silu(gg[t * w + j]!)) * uu[t * w + j]!;
        }
      }
    } finally {
      await bandGroups.release();
    }
  }
  // 3. down, whole, and the residual
  gemm.dropSpareBuffers?.();
  const last = new PreparedGroups(src, gemm);
  try {
    const down = await last.byName([m.down], [[H, I]]);
    for (let i = 0; i < states.count; i++) {
      const T = states.tokens(i);
      hooks.linearInput?.('down', acts[i]!, T, I);
      const [y] = (await down.run(acts[i]!, T)) as [Float32Array];
      const h = await states.get(i);
      for (let j = 0; j < h.length; j++) h[j] = h[j]! + y[j]!;
      await states.set(i, h);
    }
  } finally {
    await last.release();
  }
}
