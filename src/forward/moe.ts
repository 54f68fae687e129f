/**
 * A mixture-of-experts decoder layer (Mixtral, Qwen3-MoE), as transformers runs it in eager f32:
 *
 *   h  = h + attention(input_layernorm(h))                       (attentionBlock, as the dense layer)
 *   x  = post_attention_layernorm(h)                             [T, H]
 *   p  = softmax(router(x))                                      [T, E]  (f32)
 *   top-k experts per token by p; weights w = p[top-k], divided by their sum where the config says so
 *   y[t] = sum over the experts e chosen for t, in expert order: w[t, e] * down_e(silu(gate_e(x[t])) * up_e(x[t]))
 *   h  = h + y
 *
 * Each expert runs only on the tokens routed to it, so its statistics are those of ModelOpt's
 * calibration through the normal routing (spec families.md §1.4); an expert no token reached
 * reports an empty input. Layers off the MoE schedule (Qwen3-MoE's mlp_only_layers) use the dense
 * SwiGLU MLP.
 */
import type { ModelConfig, MoeConfig } from './config.js';
import type { GemmEngine } from './gemm.js';
import { rmsnorm } from './ops.js';
import { attentionBlock, swiGluMlp, type LayerHooks, type PreparedAttention, type PreparedGroup } from './layer.js';
import { f32, PreparedGroups, type WeightSource } from './weights.js';

export type { MoeConfig };

/** Checkpoint names of one MoE (or dense) layer's weights, as the family gives them. */
export interface MoeLayerNames {
  q: string;
  k: string;
  v: string;
  o: string;
  inputNorm: string;
  postNorm: string;
  qNorm?: string;
  kNorm?: string;
  mlp: { kind: 'dense'; gate: string; up: string; down: string } | { kind: 'moe'; router: string; experts: { gate: string; up: string; down: string }[] };
}

export interface PreparedMoeLayer extends PreparedAttention {
  postNorm: Float32Array;
  mlp: { kind: 'dense'; gateUp: PreparedGroup; down: PreparedGroup; I: number } | { kind: 'moe'; router: PreparedGroup; experts: { gateUp: PreparedGroup; down: PreparedGroup }[]; I: number };
  release(): Promise<void>;
}

/** A SwiGLU MLP's gate|up and down as GEMM groups (an expert's, a shared expert's, a dense MLP's): [I, H] x2 and [H, I]. */
export async function prepareSwiGlu(g: PreparedGroups, m: { gate: string; up: string; down: string }, H: number, I: number): Promise<{ gateUp: PreparedGroup; down: PreparedGroup }> {
  return { gateUp: await g.byName([m.gate, m.up], [[I, H], [I, H]], { swiGlu: true }), down: await g.byName([m.down], [[H, I]]) };
}

/** The attention part of a layer, prepared into `g`. */
async function loadAttention(src: WeightSource, names: MoeLayerNames, cfg: ModelConfig, g: PreparedGroups): Promise<PreparedAttention> {
  const optional = async (name: string | undefined) => (name !== undefined && src.tensors.has(name) ? f32(src, name) : undefined);
  const H = cfg.hiddenSize, q = cfg.numHeads * cfg.headDim, kv = cfg.numKvHeads * cfg.headDim;
  return {
    norms: { inputNorm: await f32(src, names.inputNorm), qNorm: await optional(names.qNorm), kNorm: await optional(names.kNorm) },
    engine: g.gemm,
    qkv: await g.byName([names.q, names.k, names.v], [[q, H], [kv, H], [kv, H]]),
    o: await g.byName([names.o], [[H, q]]),
  };
}

/** Loads a layer's weights prepared for the GEMM engine (experts one GEMM group each). */
export async function loadPreparedMoeLayer(src: WeightSource, names: MoeLayerNames, cfg: ModelConfig, moe: MoeConfig, gemm: GemmEngine): Promise<PreparedMoeLayer> {
  const H = cfg.hiddenSize;
  const g = new PreparedGroups(src, gemm);
  try {
    const attn = await loadAttention(src, names, cfg, g);
    let mlp: PreparedMoeLayer['mlp'];
    if (names.mlp.kind === 'dense') {
      const I = cfg.intermediateSize;
      mlp = { kind: 'dense', I, ...(await prepareSwiGlu(g, names.mlp, H, I)) };
    } else {
      const I = moe.expertIntermediateSize;
      const router = await g.byName([names.mlp.router], [[moe.numExperts, H]]);
      const experts: { gateUp: PreparedGroup; down: PreparedGroup }[] = [];
      for (const e of names.mlp.experts) experts.push(await prepareSwiGlu(g, e, H, I));
      mlp = { kind: 'moe', I, router, experts };
    }
    return { ...attn, postNorm: await f32(src, names.postNorm), mlp, release: () => g.release() };
  } catch (e) {
    await g.release();
    throw e;
  }
}

/**
 * Experts 0..n-1 prepared a group at a time, at most `groupBytes` of f32 weights each (one expert
 * `expertBytes`): `prepare` readies one expert into the group's holder, `run` uses the group's
 * experts (the first one is expert e0), then the group is released before the next.
 */
export async function expertsInGroups<X>(
  src: WeightSource,
  gemm: GemmEngine,
  n: number,
  expertBytes: number,
  groupBytes: number,
  prepare: (e: number, g: PreparedGroups) => Promise<X>,
  run: (prepared: X[], e0: number) => Promise<void>,
): Promise<void> {
  const per = Math.max(1, Math.floor(groupBytes / expertBytes));
  for (let e0 = 0; e0 < n; e0 += per) {
    const g = new PreparedGroups(src, gemm);
    try {
      const prepared: X[] = [];
      for (let e = e0; e < Math.min(n, e0 + per); e++) prepared.push(await prepare(e, g));
      await run(prepared, e0);
    } finally {
      await g.release();
    }
  }
}

/** The calibration samples' hidden states between layers (see HiddenStore). */
export interface SampleStates {
  count: number;
  tokens(i: number): number;
  get(i: number): Promise<Float32Array>;
  set(i: number, h: Float32Array): Promise<void>;
}

/** Default weight budget of one group of experts prepared at once (f32). */
export const EXPERT_GROUP_BYTES = 256 * 2 ** 20;

/**
 * One sparse layer over every calibration sample, its weights held a part at a time: attention and
 * router first (each sample's post-attention normed input and routing kept), then the experts in
 * groups of at most `groupBytes` of f32 weights, each group over every sample's routed tokens,
 * then the residual. Memory: the samples' normed inputs and MLP outputs (twice the hidden states)
 * plus one group of experts, whatever the number of experts. Same arithmetic, in the same order,
 * as moeDecoderLayer on each sample, so the results are the same bits.
 */
export async function moeLayerOverSamples(
  src: WeightSource,
  names: MoeLayerNames,
  cfg: ModelConfig,
  moe: MoeConfig,
  gemm: GemmEngine,
  states: SampleStates,
  cos: Float32Array,
  sin: Float32Array,
  hooks: LayerHooks = {},
  groupBytes = EXPERT_GROUP_BYTES,
): Promise<void> {
  if (names.mlp.kind !== 'moe') throw new Error('moeLayerOverSamples: a dense layer');
  const H = cfg.hiddenSize, I = moe.expertIntermediateSize;
  const experts = names.mlp.experts;
  // 1. attention and routing, sample by sample
  const xs: Float32Array[] = [];
  const routes: { tokens: number[]; weights: number[] }[][] = [];
  const first = new PreparedGroups(src, gemm);
  try {
    const attn = await loadAttention(src, names, cfg, first);
    const router = await first.byName([names.mlp.router], [[moe.numExperts, H]]);
    const postNorm = await f32(src, names.postNorm);
    for (let i = 0; i < states.count; i++) {
      const T = states.tokens(i);
      const h = await attentionBlock(await states.get(i), T, attn, cfg, cos, sin, hooks);
      await states.set(i, h);
      const x = rmsnorm(h, T, H, postNorm, cfg.rmsNormEps);
      hooks.linearInput?.('router', x, T, H);
      const [logits] = (await router.run(x, T)) as [Float32Array];
      routes.push(route(logits, T, moe));
      xs.push(x);
    }
  } finally {
    await first.release();
  }
  // 2. experts, a group at a time, each over every sample
  const ys = xs.map((x) => new Float32Array(x.length));
  await expertsInGroups(src, gemm, experts.length, 3 * I * H * 4, groupBytes, (e, g) => prepareSwiGlu(g, experts[e]!, H, I), async (prepared, e0) => {
    for (let i = 0; i < states.count; i++) {
      for (let j = 0; j < prepared.length; j++) await expertInto(ys[i]!, xs[i]!, H, I, routes[i]![e0 + j]!, prepared[j]!, e0 + j, hooks);
    }
  });
  // 3. residual
  for (let i = 0; i < states.count; i++) {
    const h = await states.get(i);
    const y = ys[i]!;
    for (let k = 0; k < h.length; k++) h[k] = h[k]! + y[k]!;
    await states.set(i, h);
  }
}

/** y[t] += w * expert(x[t]) over the tokens routed to expert e (hooks see its inputs; an empty input when none). */
export async function expertInto(
  y: Float32Array,
  x: Float32Array,
  H: number,
  I: number,
  r: { tokens: number[]; weights: number[] },
  ex: { gateUp: PreparedGroup; down: PreparedGroup },
  e: number,
  hooks: LayerHooks,
): Promise<void> {
  const Te = r.tokens.length;
  const xe = new Float32Array(Te * H); // the rows of x routed here
  for (let j = 0; j < Te; j++) xe.set(x.subarray(r.tokens[j]! * H, r.tokens[j]! * H + H), j * H);
  if (Te === 0) {
    for (const role of ['gate', 'up']) hooks.linearInput?.(`e${e}.${role}`, xe, 0, H);
    hooks.linearInput?.(`e${e}.down`, new Float32Array(0), 0, I);
    return;
  }
  const dn = await swiGluMlp(xe, Te, H, I, ex.gateUp, ex.down, hooks, `e${e}.`);
  for (let j = 0; j < Te; j++) {
    const w = r.weights[j]!, o = r.tokens[j]! * H, q = j * H;
    for (let k = 0; k < H; k++) y[o + k] = Math.fround(y[o + k]! + Math.fround(dn[q + k]! * w));
  }
}

/**
 * Routing of T tokens: for each expert, the tokens sent to it (ascending) and their weights.
 * logits [T, E] -> softmax in f32 per token -> top-k (ties to the lower expert index) -> weights.
 */
export function route(logits: Float32Array, T: number, moe: MoeConfig): { tokens: number[]; weights: number[] }[] {
  const E = moe.numExperts;
  const per = Array.from({ length: E }, () => ({ tokens: [] as number[], weights: [] as number[] }));
  const p = new Float32Array(E);
  const order = Array.from({ length: E }, (_, i) => i);
  for (let t = 0; t < T; t++) {
    let m = -Infinity;
    for (let e = 0; e < E; e++) m = Math.max(m, logits[t * E + e]!);
    let sum = 0;
    for (let e = 0; e < E; e++) sum += Math.exp(logits[t * E + e]! - m);
    for (let e = 0; e < E; e++) p[e] = Math.fround(Math.exp(logits[t * E + e]! - m) / sum);
    order.sort((a, b) => p[b]! - p[a]! || a - b);
    const top = order.slice(0, moe.topK);
    let norm = 1;
    if (moe.normTopKProb) {
      let s = 0;
      for (const e of top) s = Math.fround(s + p[e]!);
      norm = s;
    }
    for (const e of top) {
      per[e]!.tokens.push(t);
      per[e]!.weights.push(moe.normTopKProb ? Math.fround(p[e]! / norm) : p[e]!);
    }
  }
  return per;
}

/**
 * The sparse MLP: x [T, H] (post-attention normed) -> y [T, H], experts in index order, each on its
 * tokens. Hooks: "router" sees x; "e{e}.gate" / "e{e}.up" / "e{e}.down" see each expert's inputs.
 */
export async function moeMlp(
  x: Float32Array,
  T: number,
  H: number,
  mlp: Extract<PreparedMoeLayer['mlp'], { kind: 'moe' }>,
  moe: MoeConfig,
  hooks: LayerHooks = {},
): Promise<Float32Array> {
  hooks.linearInput?.('router', x, T, H);
  const [logits] = (await mlp.router.run(x, T)) as [Float32Array]; // [T, E]
  const routes = route(logits, T, moe);
  const y = new Float32Array(T * H);
  for (let e = 0; e < mlp.experts.length; e++) await expertInto(y, x, H, mlp.I, routes[e]!, mlp.experts[e]!, e, hooks);
  return y;
}

/** h [T, H] -> h' [T, H], written over h (see the file comment). */
export async function moeDecoderLayer(
  h: Float32Array,
  T: number,
  layer: PreparedMoeLayer,
  cfg: ModelConfig,
  moe: MoeConfig,
  cos: Float32Array,
  sin: Float32Array,
  hooks: LayerHooks = {},
  valid?: Uint8Array,
): Promise<Float32Array> {
  const H = cfg.hiddenSize;
  await attentionBlock(h, T, layer, cfg, cos, sin, hooks, valid);
  const x = rmsnorm(h, T, H, layer.postNorm, cfg.rmsNormEps);
  const y = layer.mlp.kind === 'moe' ? await moeMlp(x, T, H, layer.mlp, moe, hooks) : await swiGluMlp(x, T, H, layer.mlp.I, layer.mlp.gateUp, layer.mlp.down, hooks);
  for (let i = 0; i < h.length; i++) h[i] = h[i]! + y[i]!;
  return h;
}
