/**
 * A Llama 4 text decoder layer (Scout, Maverick; transformers' Llama4TextDecoderLayer), eager f32:
 *
 *   x  = input_layernorm(h)                                          [T, H]
 *   q, k, v = q_proj(x), k_proj(x), v_proj(x)
 *   RoPE layers: q, k rotated as complex pairs (x[2i], x[2i+1]) by position * inv_freq[i], then
 *                (use_qk_norm) each head L2-normalized: x / sqrt(mean(x^2) + eps), no weight;
 *                the attention is chunked: query i sees keys j <= i of its own chunk of attention_chunk_size
 *   NoPE layers: no rotation; (attn_temperature_tuning) q *= 1 + attn_scale * log1p(floor((pos + 1) / floor_scale))
 *   h  = h + o_proj(attention(q, k, v))
 *   x  = post_attention_layernorm(h)
 *   MoE layers:  logits = router(x) [T, E]; score[t, e] = sigmoid(logits[t, e]) for the top-k experts of t, else 0;
 *                every expert e runs on every token, scaled: x_e = x * score[:, e]
 *                  gate|up = x_e @ gate_up_proj[e]  ([E, H, 2I], input-major: [H, 2I] per expert)
 *                  y_e = (up * silu(gate)) @ down_proj[e]            ([E, I, H])
 *                y = shared_expert(x) + sum over e of y_e
 *   dense layers: y = feed_forward(x), a SwiGLU MLP of intermediate_size_mlp
 *   h  = h + y
 */
import type { Llama4Config, ModelConfig } from './config.js';
import type { GemmEngine, LinearWeights } from './gemm.js';
import { rmsnorm, silu } from './ops.js';
import { attention, observeShared, swiGluMlp, type LayerHooks, type PreparedGroup } from './layer.js';
import { activationQuant, f32, PreparedGroups, type WeightSource } from './weights.js';
import { EXPERT_GROUP_BYTES, expertsInGroups, prepareSwiGlu, type SampleStates } from './moe.js';
import { formatByQuantAlgo } from '../formats/registry.js';
import { dequantizeNvfp4 } from '../formats/nvfp4.js';
import { CheckpointError } from '../errors.js';
import { expertSlice, transposed } from '../sources/views.js';

export type { Llama4Config };

export interface Llama4LayerNames {
  q: string;
  k: string;
  v: string;
  o: string;
  inputNorm: string;
  postNorm: string;
  mlp:
    | { kind: 'dense'; gate: string; up: string; down: string }
    | { kind: 'moe'; router: string; gateUp: string; down: string; shared: { gate: string; up: string; down: string } };
}

export interface PreparedLlama4Layer {
  index: number;
  engine: GemmEngine;
  inputNorm: Float32Array;
  postNorm: Float32Array;
  qkv: PreparedGroup;
  o: PreparedGroup;
  mlp:
    | { kind: 'dense'; gateUp: PreparedGroup; down: PreparedGroup }
    | { kind: 'moe'; router: PreparedGroup; experts: { gateUp: PreparedGroup; down: PreparedGroup }[]; shared: { gateUp: PreparedGroup; down: PreparedGroup } };
  release(): Promise<void>;
}

/**
 * Expert e of a fused [E, in, out] parameter as a linear's [out, in] weight (a transposed view,
 * decoded). In an export (FP8: e4m3 [E, A, B] and one scale; NVFP4: nibbles [E, A/2, B] packed
 * along A, block scales [E, A/16, B] and weight_scale_2) it is dequantized as engines compute, and
 * its input quantized with `<name>_input_scale`.
 */
async function expertLinear(src: WeightSource, name: string, e: number): Promise<LinearWeights> {
  const t = src.tensors.get(name);
  if (!t) throw new CheckpointError(src.dir, `tensor "${name}" is missing`);
  const scale = src.tensors.get(`${name}_weight_scale`);
  if (!scale) {
    const w = transposed(expertSlice(t, e));
    return { w: await w.toFloat32(), N: w.shape[0]!, K: w.shape[1]! };
  }
  const fmt = formatByQuantAlgo(src.quantAlgo);
  if (!fmt?.fused) throw new CheckpointError(src.dir, `cannot run ${name} stored as quant_algo ${JSON.stringify(src.quantAlgo)}`);
  const scalar = async (n: string) => (src.tensors.has(n) ? (await f32(src, n))[0]! : undefined);
  const [, Ap, B] = t.shape as [number, number, number];
  const q = await expertSlice(t, e).read(); // [A, B] or [A/2, B]
  let w: Float32Array, A: number;
  if (fmt.fused.layout === 'rows') {
    A = Ap;
    const rows = fmt.dequantize(q, [A, B], await scale.read(), await scalar(`${name}_weight_scale_2`)).w; // [A, B]
    w = new Float32Array(A * B);
    for (let a = 0; a < A; a++) for (let b = 0; b < B; b++) w[b * A + a] = rows[a * B + b]!;
  } else {
    A = Ap * 2;
    const s = await expertSlice(scale, e).read(); // [A/16, B]
    const codes = new Uint8Array(B * A), scales = new Uint8Array(B * (A / 16));
    for (let b = 0; b < B; b++) {
      for (let a = 0; a < A; a++) codes[b * A + a] = (q[(a >> 1) * B + b]! >> ((a & 1) * 4)) & 15;
      for (let g = 0; g < A / 16; g++) scales[b * (A / 16) + g] = s[g * B + b]!;
    }
    w = dequantizeNvfp4(codes, scales, B, A, (await scalar(`${name}_weight_scale_2`))!);
  }
  const inputScale = await scalar(`${name}_input_scale`);
  return { w, N: B, K: A, input: activationQuant(fmt, inputScale) };
}

/** Expert e of the fused gate_up_proj [E, H, 2I] and down_proj [E, I, H], prepared into `g`. */
async function prepareExpert(g: PreparedGroups, src: WeightSource, n: { gateUp: string; down: string }, e: number, H: number, I: number): Promise<{ gateUp: PreparedGroup; down: PreparedGroup }> {
  return { gateUp: await g.add([() => expertLinear(src, n.gateUp, e)], [[2 * I, H]]), down: await g.add([() => expertLinear(src, n.down, e)], [[H, I]]) };
}

export async function loadPreparedLlama4Layer(src: WeightSource, index: number, names: Llama4LayerNames, cfg: ModelConfig, l4: Llama4Config, gemm: GemmEngine): Promise<PreparedLlama4Layer> {
  const g = new PreparedGroups(src, gemm);
  const H = cfg.hiddenSize, q = cfg.numHeads * cfg.headDim, kv = cfg.numKvHeads * cfg.headDim;
  try {
    const qkv = await g.byName([names.q, names.k, names.v], [[q, H], [kv, H], [kv, H]]);
    const o = await g.byName([names.o], [[H, q]]);
    let mlp: PreparedLlama4Layer['mlp'];
    if (names.mlp.kind === 'dense') {
      mlp = { kind: 'dense', ...(await prepareSwiGlu(g, names.mlp, H, l4.denseIntermediateSize)) };
    } else {
      const I = l4.expertIntermediateSize;
      const n = names.mlp;
      const experts: { gateUp: PreparedGroup; down: PreparedGroup }[] = [];
      for (let e = 0; e < l4.numExperts; e++) experts.push(await prepareExpert(g, src, n, e, H, I));
      mlp = { kind: 'moe', router: await g.byName([n.router], [[l4.numExperts, H]]), experts, shared: await prepareSwiGlu(g, n.shared, H, I) };
    }
    return {
      index,
      engine: gemm,
      inputNorm: await f32(src, names.inputNorm),
      postNorm: await f32(src, names.postNorm),
      qkv,
      o,
      mlp,
      release: () => g.release(),
    };
  } catch (e) {
    await g.release();
    throw e;
  }
}

/** In place, each head of x [T, heads*d]: pairs (x[2i], x[2i+1]) times (cos + i sin) of position t, frequency i. */
export function applyRopeInterleaved(x: Float32Array, T: number, heads: number, d: number, cos: Float32Array, sin: Float32Array): void {
  // cos/sin as ropeTables gives them: [T, d], the first d/2 entries of a row are frequencies 0..d/2-1
  for (let t = 0; t < T; t++)
    for (let h = 0; h < heads; h++) {
      const o = (t * heads + h) * d;
      for (let i = 0; i < d / 2; i++) {
        const a = x[o + 2 * i]!, b = x[o + 2 * i + 1]!;
        const c = cos[t * d + i]!, s = sin[t * d + i]!;
        x[o + 2 * i] = Math.fround(a * c - b * s);
        x[o + 2 * i + 1] = Math.fround(a * s + b * c);
      }
    }
}

/** In place: each row of width d divided by its root mean square (Llama4TextL2Norm: no weight). */
function l2Norm(x: Float32Array, rows: number, d: number, eps: number): void {
  for (let r = 0; r < rows; r++) {
    let ss = 0;
    for (let i = 0; i < d; i++) ss += x[r * d + i]! * x[r * d + i]!;
    const inv = Math.fround(1 / Math.sqrt(Math.fround(Math.fround(ss / d) + eps)));
    for (let i = 0; i < d; i++) x[r * d + i] = Math.fround(x[r * d + i]! * inv);
  }
}

const sigmoid = (x: number) => Math.fround(1 / (1 + Math.exp(-x)));

/** The attention half of a layer over h [T, H], written over h (see the file comment). */
async function llama4Attention(
  h: Float32Array,
  T: number,
  layer: Pick<PreparedLlama4Layer, 'index' | 'engine' | 'inputNorm' | 'qkv' | 'o'>,
  cfg: ModelConfig,
  l4: Llama4Config,
  cos: Float32Array,
  sin: Float32Array,
  hooks: LayerHooks,
): Promise<void> {
  const H = cfg.hiddenSize, d = cfg.headDim, nH = cfg.numHeads, nKV = cfg.numKvHeads;
  const i = layer.index;
  const x = rmsnorm(h, T, H, layer.inputNorm, cfg.rmsNormEps);
  observeShared(hooks, ['q', 'k', 'v'], x, T, H);
  const [q, k, v] = (await layer.qkv.run(x, T)) as [Float32Array, Float32Array, Float32Array];
  if (l4.rope[i]) {
    applyRopeInterleaved(q, T, nH, d, cos, sin);
    applyRopeInterleaved(k, T, nKV, d, cos, sin);
    if (l4.qkNorm) {
      l2Norm(q, T * nH, d, cfg.rmsNormEps);
      l2Norm(k, T * nKV, d, cfg.rmsNormEps);
    }
  } else if (l4.temperature) {
    const { floorScale, attnScale } = l4.temperature;
    for (let t = 0; t < T; t++) {
      const s = Math.fround(Math.fround(Math.log1p(Math.floor((t + 1) / floorScale)) * attnScale) + 1);
      for (let j = t * nH * d; j < (t + 1) * nH * d; j++) q[j] = Math.fround(q[j]! * s);
    }
  }
  hooks.keysValues?.(k, v, T);
  const chunk = l4.chunk[i];
  const att = chunk === undefined && layer.engine.attention ? await (await layer.engine.attention(T, nH, nKV, d))(q, k, v) : attention(q, k, v, T, nH, nKV, d, undefined, chunk);
  hooks.linearInput?.('o', att, T, nH * d);
  const [o] = (await layer.o.run(att, T)) as [Float32Array];
  for (let j = 0; j < h.length; j++) h[j] = h[j]! + o[j]!;
}

/** Router scores [T, E]: sigmoid of each token's top-k logits (ties to the lower expert), 0 elsewhere (sigmoid(-inf)). */
function routerScores(logits: Float32Array, T: number, E: number, topK: number): Float32Array {
  const score = new Float32Array(T * E);
  const order = Array.from({ length: E }, (_, e) => e);
  for (let t = 0; t < T; t++) {
    order.sort((a, b) => logits[t * E + b]! - logits[t * E + a]! || a - b);
    for (const e of order.slice(0, topK)) score[t * E + e] = sigmoid(logits[t * E + e]!);
  }
  return score;
}

/** sum += expert e on every token of x [T, H] scaled by its score (hooks see the scaled input and the activation). */
async function expertInto(sum: Float32Array, x: Float32Array, score: Float32Array, T: number, H: number, I: number, E: number, e: number, ex: { gateUp: PreparedGroup; down: PreparedGroup }, hooks: LayerHooks): Promise<void> {
  const xe = new Float32Array(T * H);
  for (let t = 0; t < T; t++) {
    const s = score[t * E + e]!;
    for (let j = 0; j < H; j++) xe[t * H + j] = Math.fround(x[t * H + j]! * s);
  }
  hooks.linearInput?.('experts.gate_up', xe, T, H);
  const [gu] = (await ex.gateUp.run(xe, T)) as [Float32Array]; // [T, 2I]: gate | up
  const act = new Float32Array(T * I);
  for (let t = 0; t < T; t++) for (let j = 0; j < I; j++) act[t * I + j] = Math.fround(gu[t * 2 * I + I + j]! * Math.fround(silu(gu[t * 2 * I + j]!)));
  hooks.linearInput?.('experts.down', act, T, I);
  const [ye] = (await ex.down.run(act, T)) as [Float32Array];
  for (let j = 0; j < sum.length; j++) sum[j] = Math.fround(sum[j]! + ye[j]!);
}

/** h [T, H] -> h' [T, H], written over h (see the file comment). */
export async function llama4DecoderLayer(
  h: Float32Array,
  T: number,
  layer: PreparedLlama4Layer,
  cfg: ModelConfig,
  l4: Llama4Config,
  cos: Float32Array,
  sin: Float32Array,
  hooks: LayerHooks = {},
): Promise<Float32Array> {
  const H = cfg.hiddenSize;
  await llama4Attention(h, T, layer, cfg, l4, cos, sin, hooks);
  const x2 = rmsnorm(h, T, H, layer.postNorm, cfg.rmsNormEps);
  let y: Float32Array;
  if (layer.mlp.kind === 'dense') {
    y = await swiGluMlp(x2, T, H, l4.denseIntermediateSize, layer.mlp.gateUp, layer.mlp.down, hooks);
  } else {
    const E = l4.numExperts, I = l4.expertIntermediateSize;
    hooks.linearInput?.('router', x2, T, H);
    const [logits] = (await layer.mlp.router.run(x2, T)) as [Float32Array]; // [T, E]
    const score = routerScores(logits, T, E, l4.topK);
    const sum = new Float32Array(T * H);
    for (let e = 0; e < E; e++) await expertInto(sum, x2, score, T, H, I, E, e, layer.mlp.experts[e]!, hooks);
    const shared = await swiGluMlp(x2, T, H, I, layer.mlp.shared.gateUp, layer.mlp.shared.down, hooks, 'shared.');
    y = new Float32Array(T * H);
    for (let j = 0; j < y.length; j++) y[j] = Math.fround(shared[j]! + sum[j]!);
  }
  for (let j = 0; j < h.length; j++) h[j] = h[j]! + y[j]!;
  return h;
}

/**
 * One MoE layer over every calibration sample, its weights a part at a time: attention, router and
 * shared expert first (each sample's normed input, scores and shared output kept), then the experts
 * in groups of at most `groupBytes` of f32 weights, each over every sample, then the residual. The
 * same arithmetic in the same order as llama4DecoderLayer on each sample.
 */
export async function llama4LayerOverSamples(
  src: WeightSource,
  index: number,
  names: Llama4LayerNames,
  cfg: ModelConfig,
  l4: Llama4Config,
  gemm: GemmEngine,
  states: SampleStates,
  cos: Float32Array,
  sin: Float32Array,
  hooks: LayerHooks = {},
  groupBytes = EXPERT_GROUP_BYTES,
): Promise<void> {
  if (names.mlp.kind !== 'moe') throw new Error('llama4LayerOverSamples: a dense layer');
  const n = names.mlp;
  const H = cfg.hiddenSize, E = l4.numExperts, I = l4.expertIntermediateSize;
  const q = cfg.numHeads * cfg.headDim, kv = cfg.numKvHeads * cfg.headDim;
  const xs: Float32Array[] = [], scores: Float32Array[] = [], shareds: Float32Array[] = [];
  // 1. attention, router, shared expert
  const first = new PreparedGroups(src, gemm);
  try {
    const attn = { index, engine: gemm, inputNorm: await f32(src, names.inputNorm), qkv: await first.byName([names.q, names.k, names.v], [[q, H], [kv, H], [kv, H]]), o: await first.byName([names.o], [[H, q]]) };
    const postNorm = await f32(src, names.postNorm);
    const router = await first.byName([n.router], [[E, H]]);
    const shared = await prepareSwiGlu(first, n.shared, H, I);
    for (let i = 0; i < states.count; i++) {
      const T = states.tokens(i);
      const h = await states.get(i);
      await llama4Attention(h, T, attn, cfg, l4, cos, sin, hooks);
      await states.set(i, h);
      const x2 = rmsnorm(h, T, H, postNorm, cfg.rmsNormEps);
      hooks.linearInput?.('router', x2, T, H);
      const [logits] = (await router.run(x2, T)) as [Float32Array];
      scores.push(routerScores(logits, T, E, l4.topK));
      xs.push(x2);
      shareds.push((await swiGluMlp(x2, T, H, I, shared.gateUp, shared.down, hooks, 'shared.')).slice());
    }
  } finally {
    await first.release();
  }
  // 2. experts, a group at a time, each over every sample
  const sums = xs.map((x) => new Float32Array(x.length));
  await expertsInGroups(src, gemm, E, 3 * I * H * 4, groupBytes, (e, g) => prepareExpert(g, src, n, e, H, I), async (experts, e0) => {
    for (let i = 0; i < states.count; i++) {
      for (let j = 0; j < experts.length; j++) await expertInto(sums[i]!, xs[i]!, scores[i]!, states.tokens(i), H, I, E, e0 + j, experts[j]!, hooks);
    }
  });
  // 3. residual
  for (let i = 0; i < states.count; i++) {
    const h = await states.get(i);
    const s = sums[i]!, sh = shareds[i]!;
    for (let j = 0; j < h.length; j++) h[j] = h[j]! + Math.fround(sh[j]! + s[j]!);
    await states.set(i, h);
  }
}
