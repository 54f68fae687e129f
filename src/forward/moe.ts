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

/** Loads a layer's weights prepared for the GEMM engine (experts one GEMM group each). */
export async function loadPreparedMoeLayer(src: WeightSource, names: MoeLayerNames, cfg: ModelConfig, moe: MoeConfig, gemm: GemmEngine): Promise<PreparedMoeLayer> {
  const optional = async (name: string | undefined) => (name !== undefined && src.tensors.has(name) ? f32(src, name) : undefined);
  const load = (m: string) => () => (gemm.prepareTransposed ? loadLinearLazily(src, m) : loadLinear(src, m));
  const H = cfg.hiddenSize, q = cfg.numHeads * cfg.headDim, kv = cfg.numKvHeads * cfg.headDim;
  const group = (ms: string[], dims: [number, number][]) => prepareGroupFrom(ms.map(load), dims, gemm);
  const prepared: PreparedGroup[] = [];
  const track = async (g: Promise<PreparedGroup>) => {
    const r = await g;
    prepared.push(r);
    return r;
  };
  try {
    const qkv = await track(group([names.q, names.k, names.v], [[q, H], [kv, H], [kv, H]]));
    const o = await track(group([names.o], [[H, q]]));
    let mlp: PreparedMoeLayer['mlp'];
    if (names.mlp.kind === 'dense') {
      const I = cfg.intermediateSize;
      mlp = { kind: 'dense', I, gateUp: await track(group([names.mlp.gate, names.mlp.up], [[I, H], [I, H]])), down: await track(group([names.mlp.down], [[H, I]])) };
    } else {
      const I = moe.expertIntermediateSize;
      const router = await track(group([names.mlp.router], [[moe.numExperts, H]]));
      const experts: { gateUp: PreparedGroup; down: PreparedGroup }[] = [];
      for (const e of names.mlp.experts) {
        experts.push({ gateUp: await track(group([e.gate, e.up], [[I, H], [I, H]])), down: await track(group([e.down], [[H, I]])) });
      }
      mlp = { kind: 'moe', I, router, experts };
    }
    return {
      norms: { inputNorm: await f32(src, names.inputNorm), qNorm: await optional(names.qNorm), kNorm: await optional(names.kNorm) },
      postNorm: await f32(src, names.postNorm),
      engine: gemm,
      qkv,
      o,
      mlp,
      release: async () => {
        await Promise.all(prepared.map((g) => g.release()));
      },
    };
  } catch (e) {
    await Promise.all(prepared.map((g) => g.release()));
    throw e;
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
  for (let e = 0; e < mlp.experts.length; e++) {
    const { tokens, weights } = routes[e]!;
    const Te = tokens.length;
    const xe = new Float32Array(Te * H); // the rows of x routed here
    for (let j = 0; j < Te; j++) xe.set(x.subarray(tokens[j]! * H, tokens[j]! * H + H), j * H);
    if (Te === 0) {
      for (const r of ['gate', 'up']) hooks.linearInput?.(`e${e}.${r}`, xe, 0, H);
      hooks.linearInput?.(`e${e}.down`, new Float32Array(0), 0, mlp.I);
      continue;
    }
    const dn = await swiGluMlp(xe, Te, H, mlp.I, mlp.experts[e]!.gateUp, mlp.experts[e]!.down, hooks, `e${e}.`);
    for (let j = 0; j < Te; j++) {
      const w = weights[j]!, o = tokens[j]! * H, r = j * H;
      for (let i = 0; i < H; i++) y[o + i] = Math.fround(y[o + i]! + Math.fround(dn[r + i]! * w));
    }
  }
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
