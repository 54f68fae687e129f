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
import { attentionBlock, prepareGroupFrom, swiGluMlp, type LayerHooks, type PreparedAttention, type PreparedGroup } from './layer.js';
import { loadLinear, loadLinearLazily, type WeightSource } from './weights.js';
import { CheckpointError } from '../errors.js';
import { decodeToFloat32 } from '../codecs/float.js';

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

async function f32(src: WeightSource, name: string): Promise<Float32Array> {
  const t = src.tensors.get(name);
  if (!t) throw new CheckpointError(src.dir, `tensor "${name}" is missing`);
  return decodeToFloat32(await t.read(), t.dtype, name);
}

/** Prepares the linears `ms` as one GEMM group (dims: each one's [N, K]), loading them only as the engine needs them. */
function groupLoader(src: WeightSource, gemm: GemmEngine) {
  const load = (m: string) => () => (gemm.prepareTransposed ? loadLinearLazily(src, m) : loadLinear(src, m));
  return (ms: string[], dims: [number, number][]) => prepareGroupFrom(ms.map(load), dims, gemm);
}

/** Releases what was prepared if a later step fails. */
async function preparedAll<T>(steps: (track: (g: Promise<PreparedGroup>) => Promise<PreparedGroup>) => Promise<T>): Promise<{ value: T; release: () => Promise<void> }> {
  const prepared: PreparedGroup[] = [];
  const release = async () => {
    await Promise.all(prepared.splice(0).map((g) => g.release()));
  };
  try {
    const value = await steps(async (g) => {
      const r = await g;
      prepared.push(r);
      return r;
    });
    return { value, release };
  } catch (e) {
    await release();
    throw e;
  }
}

/** The attention part of a layer, prepared. */
async function loadAttention(src: WeightSource, names: MoeLayerNames, cfg: ModelConfig, gemm: GemmEngine, track: (g: Promise<PreparedGroup>) => Promise<PreparedGroup>): Promise<PreparedAttention> {
  const optional = async (name: string | undefined) => (name !== undefined && src.tensors.has(name) ? f32(src, name) : undefined);
  const group = groupLoader(src, gemm);
  const H = cfg.hiddenSize, q = cfg.numHeads * cfg.headDim, kv = cfg.numKvHeads * cfg.headDim;
  return {
    norms: { inputNorm: await f32(src, names.inputNorm), qNorm: await optional(names.qNorm), kNorm: await optional(names.kNorm) },
    engine: gemm,
    qkv: await track(group([names.q, names.k, names.v], [[q, H], [kv, H], [kv, H]])),
    o: await track(group([names.o], [[H, q]])),
  };
}

/** Experts [e0, e1) of a sparse layer, prepared (each its gate|up and its down as GEMM groups). */
async function loadExperts(src: WeightSource, experts: { gate: string; up: string; down: string }[], H: number, I: number, gemm: GemmEngine, track: (g: Promise<PreparedGroup>) => Promise<PreparedGroup>) {
  const group = groupLoader(src, gemm);
  const out: { gateUp: PreparedGroup; down: PreparedGroup }[] = [];
  for (const e of experts) out.push({ gateUp: await track(group([e.gate, e.up], [[I, H], [I, H]])), down: await track(group([e.down], [[H, I]])) });
  return out;
}

/** Loads a layer's weights prepared for the GEMM engine (experts one GEMM group each). */
export async function loadPreparedMoeLayer(src: WeightSource, names: MoeLayerNames, cfg: ModelConfig, moe: MoeConfig, gemm: GemmEngine): Promise<PreparedMoeLayer> {
  const H = cfg.hiddenSize;
  const group = groupLoader(src, gemm);
  const { value, release } = await preparedAll(async (track) => {
    const attn = await loadAttention(src, names, cfg, gemm, track);
    let mlp: PreparedMoeLayer['mlp'];
    if (names.mlp.kind === 'dense') {
      const I = cfg.intermediateSize;
      mlp = { kind: 'dense', I, gateUp: await track(group([names.mlp.gate, names.mlp.up], [[I, H], [I, H]])), down: await track(group([names.mlp.down], [[H, I]])) };
    } else {
      const I = moe.expertIntermediateSize;
      const router = await track(group([names.mlp.router], [[moe.numExperts, H]]));
      mlp = { kind: 'moe', I, router, experts: await loadExperts(src, names.mlp.experts, H, I, gemm, track) };
    }
    return { ...attn, postNorm: await f32(src, names.postNorm), mlp };
  });
  return { ...value, release };
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
  {
    const mlpNames = names.mlp;
    const { value, release } = await preparedAll(async (track) => ({
      attn: await loadAttention(src, names, cfg, gemm, track),
      router: await track(groupLoader(src, gemm)([mlpNames.router], [[moe.numExperts, H]])),
      postNorm: await f32(src, names.postNorm),
    }));
    try {
      for (let i = 0; i < states.count; i++) {
        const T = states.tokens(i);
        const h = await attentionBlock(await states.get(i), T, value.attn, cfg, cos, sin, hooks);
        await states.set(i, h);
        const x = rmsnorm(h, T, H, value.postNorm, cfg.rmsNormEps);
        hooks.linearInput?.('router', x, T, H);
        const [logits] = (await value.router.run(x, T)) as [Float32Array];
        routes.push(route(logits, T, moe));
        xs.push(x);
      }
    } finally {
      await release();
    }
  }
  // 2. experts, a group at a time, each over every sample
  const ys = xs.map((x) => new Float32Array(x.length));
  const perGroup = Math.max(1, Math.floor(groupBytes / (3 * I * H * 4)));
  for (let e0 = 0; e0 < experts.length; e0 += perGroup) {
    const ids = experts.slice(e0, e0 + perGroup);
    const { value: prepared, release } = await preparedAll((track) => loadExperts(src, ids, H, I, gemm, track));
    try {
      for (let i = 0; i < states.count; i++) {
        for (let j = 0; j < prepared.length; j++) {
          await expertInto(ys[i]!, xs[i]!, H, I, routes[i]![e0 + j]!, prepared[j]!, e0 + j, hooks);
        }
      }
    } finally {
      await release();
    }
  }
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
