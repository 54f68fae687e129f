/**
 * An EAGLE draft (spec families.md §7.2): a small Llama-style decoder that drafts tokens for a
 * target model from the target's own hidden states, stored as its own checkpoint:
 *   fc                                     [H, nA*H]   EAGLE-3 only: the target's auxiliary hidden states -> H
 *   layers.0.hidden_norm                   [H]         EAGLE-3 only
 *   layers.{i}.input_layernorm, post_attention_layernorm [H]
 *   layers.{i}.self_attn.{q,k,v,o}_proj    layer 0 of EAGLE-3: q/k/v read 2H (the embeddings beside the hidden state)
 *   layers.{i}.mlp.{gate,up,down}_proj
 *   norm [H], lm_head [draft_vocab, H] (else the target's), d2t [draft_vocab] I64 (draft -> target token offsets)
 * config.json: a Llama config with `eagle_config` ({use_aux_hidden_state, eagle_aux_hidden_state_layer_ids,
 * use_last_layernorm, ...}) and `draft_vocab_size`. (The EAGLE authors' own checkpoints call layer 0
 * `midlayer`; it is read as `layers.0`, the name ModelOpt writes.)
 *
 * The draft's first step, as ModelOpt's HF plugin runs it in evaluation (one step, no test-time
 * training), for token ids [T] of one sample:
 *   e = embed_target(ids rolled left by one)                   [T, H]  (e[t] = embedding of ids[(t+1) % T])
 *   EAGLE-3: x = fc(cat(h_a for a in aux ids))                 [T, H]  (h_a: the target's layer-a output, before any norm)
 *   else:    x = the target's last hidden state after its final norm
 *   layer 0, EAGLE-3: the decoder layer's own input_layernorm runs on x, then a hook replaces the
 *     attention input by cat(input_layernorm(e), hidden_norm(input_layernorm(x)))  [T, 2H];
 *     residual x, then post_attention_layernorm -> SwiGLU MLP -> residual, as in Llama
 *   layer 0 otherwise, and layers 1.., a plain Llama decoder layer
 *   then norm (when the draft has it) -> lm_head.
 * SGLang's EAGLE-3 layer normalizes x once (hidden_norm(x)); ModelOpt's training and calibration see
 * the double norm above, and it is ModelOpt's statistics that rxquant reproduces.
 */
import { CheckpointError, QuantizationError } from '../errors.js';
import type { ModelConfig } from '../forward/config.js';
import type { GemmEngine } from '../forward/gemm.js';
import { attention, decoderLayer, observeShared, swiGluMlp, type LayerHooks, type PreparedLayer } from '../forward/layer.js';
import { rmsnorm } from '../forward/ops.js';
import { applyRope } from '../forward/rope.js';
import { f32, loadPreparedLayer, PreparedGroups, type WeightSource } from '../forward/weights.js';
import { isFloatWeightDType } from '../safetensors/dtypes.js';
import type { TensorSource } from '../sources/source.js';
import type { PyValue } from '../util/pyjson.js';
import type { LayerLayout, ModelFamily } from './base.js';
import { denseLayerNames } from './dense.js';
import { parseModelConfig } from './config.js';
import { llama } from './llama.js';

export interface EagleConfig {
  /** EAGLE-3: the draft reads the outputs of several target layers through `fc`. */
  useAux: boolean;
  /** The target layers whose outputs the draft reads (EAGLE-3), in fc's input order. */
  auxLayerIds: number[];
  draftVocab: number;
  /** The draft's decoder (sizes, heads, RoPE) from its config.json. */
  config: ModelConfig;
}

/** config.json describes an EAGLE draft: an `eagle_config` block, or an `...Eagle...` architecture. */
export function isEagleDraft(plain: Record<string, unknown>): boolean {
  const archs = Array.isArray(plain.architectures) ? plain.architectures : [];
  return (typeof plain.eagle_config === 'object' && plain.eagle_config !== null) || archs.some((a) => typeof a === 'string' && /Eagle/.test(a));
}

/**
 * ModelOpt's default auxiliary layers for a target of L layers when the draft names none: three near
 * the start, middle and end, sorted({1, max(0, L/2 - 1), max(0, L - 4)}).
 */
export function defaultAuxLayerIds(L: number): number[] {
  return [...new Set([1, Math.max(0, Math.floor(L / 2) - 1), Math.max(0, L - 4)])].sort((a, b) => a - b);
}

/**
 * The draft's config.json, validated against its target when given (same hidden size and
 * vocabulary; aux layers inside the target). Without the target (checking an export), the aux
 * layers must be listed.
 */
export function parseEagle(plain: Record<string, unknown>, path: string, target?: ModelConfig): EagleConfig {
  if (plain.model_type !== undefined && plain.model_type !== 'llama') {
    throw new CheckpointError(path, `an EAGLE draft of model_type ${JSON.stringify(plain.model_type)} is not supported; rxquant reads Llama-style drafts (model_type "llama", ModelOpt's eagle_decoder_type "llama")`);
  }
  const config = parseModelConfig({ ...plain, model_type: 'llama' }, path);
  const ec = (typeof plain.eagle_config === 'object' && plain.eagle_config !== null ? plain.eagle_config : {}) as Record<string, unknown>;
  const useAux = (ec.use_aux_hidden_state ?? plain.use_aux_hidden_state) === true;
  let ids = ec.eagle_aux_hidden_state_layer_ids ?? plain.eagle_aux_hidden_state_layer_ids;
  if (useAux && target && (ids == null || (Array.isArray(ids) && ids.length === 0))) ids = defaultAuxLayerIds(target.numLayers);
  const L = target?.numLayers ?? Infinity;
  if (useAux && (!Array.isArray(ids) || ids.length === 0 || ids.some((i) => !Number.isSafeInteger(i) || i < 0 || i >= L) || new Set(ids).size !== ids.length)) {
    throw new CheckpointError(path, `eagle_config.eagle_aux_hidden_state_layer_ids must be distinct target layers${target ? ` 0..${L - 1}` : ''}, got ${JSON.stringify(ids)}`);
  }
  if (target && config.hiddenSize !== target.hiddenSize) {
    throw new CheckpointError(path, `the draft's hidden_size ${config.hiddenSize} differs from its target's ${target.hiddenSize} (an EAGLE draft reads the target's hidden states)`);
  }
  if (target && config.vocabSize !== target.vocabSize) {
    throw new CheckpointError(path, `the draft's vocab_size ${config.vocabSize} differs from its target's ${target.vocabSize}: is --base the model this draft was trained for?`);
  }
  const dv = plain.draft_vocab_size ?? config.vocabSize;
  if (typeof dv !== 'number' || !Number.isSafeInteger(dv) || dv <= 0 || dv > config.vocabSize) {
    throw new CheckpointError(path, `"draft_vocab_size" must be an integer in 1..vocab_size (${config.vocabSize}), got ${JSON.stringify(dv)}`);
  }
  return { useAux, auxLayerIds: useAux ? (ids as number[]) : [], draftVocab: dv, config };
}

const ROLES = ['q', 'k', 'v', 'o', 'gate', 'up', 'down'] as const;

/** The draft's layer i: Llama names under `layers.{i}` (no `model.` prefix). */
function draftLayer(i: number): LayerLayout {
  const p = `layers.${i}`;
  const names = ROLES.map((r) => (r === 'gate' || r === 'up' || r === 'down' ? `${p}.mlp.${r}_proj` : `${p}.self_attn.${r}_proj`));
  const [q, k, v, , gate, up] = names as [string, string, string, string, string, string, string];
  return {
    index: i,
    prefix: p,
    linears: names,
    roles: [...ROLES],
    groups: [{ members: [q, k, v] }, { members: [gate, up], norm: `${p}.post_attention_layernorm` }],
    attention: `${p}.self_attn`,
    linearFolds: [],
  };
}

/** `fc` as a layout of its own (index -1: outside the decoder layers, quantized with the rest). */
export function eagleOuterLayout(e: EagleConfig): LayerLayout | undefined {
  return e.useAux ? { index: -1, prefix: 'fc', linears: ['fc'], roles: ['fc'], groups: [], attention: '', linearFolds: [] } : undefined;
}

/** Every tensor the draft must or may hold, with its shape and dtype rule. */
export function eagleTensorSpecs(e: EagleConfig): { name: string; shape: number[]; required: boolean; int64?: boolean }[] {
  const c = e.config;
  const H = c.hiddenSize, q = c.numHeads * c.headDim, kv = c.numKvHeads * c.headDim, I = c.intermediateSize;
  const out: { name: string; shape: number[]; required: boolean; int64?: boolean }[] = [];
  for (let i = 0; i < c.numLayers; i++) {
    const p = `layers.${i}`;
    const K = i === 0 && e.useAux ? 2 * H : H;
    out.push(
      { name: `${p}.self_attn.q_proj.weight`, shape: [q, K], required: true },
      { name: `${p}.self_attn.k_proj.weight`, shape: [kv, K], required: true },
      { name: `${p}.self_attn.v_proj.weight`, shape: [kv, K], required: true },
      { name: `${p}.self_attn.o_proj.weight`, shape: [H, q], required: true },
      { name: `${p}.mlp.gate_proj.weight`, shape: [I, H], required: true },
      { name: `${p}.mlp.up_proj.weight`, shape: [I, H], required: true },
      { name: `${p}.mlp.down_proj.weight`, shape: [H, I], required: true },
      { name: `${p}.input_layernorm.weight`, shape: [H], required: true },
      { name: `${p}.post_attention_layernorm.weight`, shape: [H], required: true },
    );
  }
  if (e.useAux) {
    out.push({ name: 'layers.0.hidden_norm.weight', shape: [H], required: true }, { name: 'fc.weight', shape: [H, e.auxLayerIds.length * H], required: true });
  }
  out.push({ name: 'norm.weight', shape: [H], required: false }, { name: 'lm_head.weight', shape: [e.draftVocab, H], required: false });
  if (e.draftVocab < c.vocabSize) out.push({ name: 'd2t', shape: [e.draftVocab], required: true, int64: true });
  return out;
}

/**
 * Checks the draft's tensors against its config (all of them: a name the draft format does not
 * have is refused, as ModelOpt's exporter refuses it).
 */
export function checkEagleTensors(tensors: Map<string, TensorSource>, e: EagleConfig, dir: string): void {
  const specs = eagleTensorSpecs(e);
  for (const s of specs) {
    const t = tensors.get(s.name);
    if (!t) {
      if (s.required) throw new CheckpointError(dir, `tensor "${s.name}" is missing (config.json describes ${e.useAux ? 'an EAGLE-3' : 'an EAGLE'} draft of ${e.config.numLayers} layer(s))`);
      continue;
    }
    if (t.shape.length !== s.shape.length || t.shape.some((d, i) => d !== s.shape[i])) {
      throw new CheckpointError(dir, `tensor "${s.name}" has shape [${t.shape.join(', ')}], expected [${s.shape.join(', ')}] from config.json`);
    }
    if (s.int64 ? t.dtype !== 'I64' : !isFloatWeightDType(t.dtype)) {
      throw new CheckpointError(dir, `tensor "${s.name}" has dtype ${t.dtype}; expected ${s.int64 ? 'I64' : 'BF16, F16 or F32 (already quantized?)'}`);
    }
  }
  const known = new Set(specs.map((s) => s.name));
  const extra = [...tensors.keys()].find((n) => !known.has(n));
  if (extra) throw new CheckpointError(dir, `tensor "${extra}" is not part of an EAGLE draft as ModelOpt exports it (layers.{i}.*, fc, norm, lm_head, d2t)`);
}

const NO_FORWARD = 'an EAGLE draft runs only behind its target: rxquant quantize DRAFT --base TARGET';

/** The draft as a model family: its layers' names and shapes for the export plan. Its forward is `runEagleDraft`. */
export function eagleFamily(e: EagleConfig): ModelFamily {
  return {
    modelType: 'llama',
    family: e.useAux ? 'EAGLE-3 draft (Llama)' : 'EAGLE draft (Llama)',
    parseConfig: () => e.config,
    names: { embed: 'embed_tokens', finalNorm: 'norm.weight', lmHead: 'lm_head' },
    alwaysExcluded: ['lm_head'],
    awqUnsupported: "ModelOpt's EAGLE recipe is FP8 and rxquant has no AWQ search for a draft's concatenated first-layer input",
    layer: (i) => draftLayer(i),
    linearShape: (module, cfg) => {
      const s = eagleTensorSpecs(e).find((t) => t.name === `${module}.weight`);
      return s ? (s.shape as [number, number]) : llama.linearShape(module, cfg);
    },
    forward: {
      load: () => Promise.reject(new QuantizationError(NO_FORWARD)),
      run: () => Promise.reject(new QuantizationError(NO_FORWARD)),
    },
  };
}

/** The draft's weights ready to run. */
export interface PreparedEagle {
  /**
   * One sample's first draft step: e [T, H] the target's embeddings of the ids rolled left by one,
   * x [T, H] the hidden state the draft reads (fc's output for EAGLE-3: see `fc`). Reports every
   * draft linear's input, lm_head's, and each layer's post-RoPE K/V to the hooks, by module name.
   */
  run(e: Float32Array, x: Float32Array, T: number, cos: Float32Array, sin: Float32Array, hooks: EagleHooks): Promise<void>;
  /** EAGLE-3: aux [T, nA*H] -> fc(aux) [T, H] (a new array), reporting fc's input. */
  fc(aux: Float32Array, T: number, hooks: EagleHooks): Promise<Float32Array>;
  release(): Promise<void>;
}

export interface EagleHooks {
  linearInputs(modules: readonly string[], x: Float32Array, T: number, K: number): void;
  keysValues(attention: string, k: Float32Array, v: Float32Array): void;
}

/** LayerHooks of a draft layer: roles mapped to the layer's module names. */
function layerHooks(layout: LayerLayout, hooks: EagleHooks): LayerHooks {
  const mod = (r: string) => layout.linears[layout.roles.indexOf(r)]!;
  return {
    linearInputs: (roles, x, T, K) => hooks.linearInputs(roles.map(mod), x, T, K),
    linearInput: (role, x, T, K) => hooks.linearInputs([mod(role)], x, T, K),
    keysValues: (k, v) => hooks.keysValues(layout.attention, k, v),
  };
}

export async function loadEagleDraft(src: WeightSource, e: EagleConfig, gemm: GemmEngine): Promise<PreparedEagle> {
  const c = e.config;
  const H = c.hiddenSize, d = c.headDim, nH = c.numHeads, nKV = c.numKvHeads, I = c.intermediateSize;
  const groups = new PreparedGroups(src, gemm);
  const plain: PreparedLayer[] = [];
  try {
    const fc = e.useAux ? await groups.byName(['fc'], [[H, e.auxLayerIds.length * H]]) : undefined;
    const finalNorm = src.tensors.has('norm.weight') ? await f32(src, 'norm.weight') : undefined;
    // EAGLE-3's layer 0: q/k/v over [T, 2H], the rest as Llama's
    const l0 = draftLayer(0);
    const first = e.useAux
      ? {
          qkv: await groups.byName(l0.linears.slice(0, 3), [[nH * d, 2 * H], [nKV * d, 2 * H], [nKV * d, 2 * H]]),
          o: await groups.byName([l0.linears[3]!], [[H, nH * d]]),
          gateUp: await groups.byName([l0.linears[4]!, l0.linears[5]!], [[I, H], [I, H]], { swiGlu: true }),
          down: await groups.byName([l0.linears[6]!], [[H, I]]),
          inputNorm: await f32(src, 'layers.0.input_layernorm.weight'),
          hiddenNorm: await f32(src, 'layers.0.hidden_norm.weight'),
          postNorm: await f32(src, 'layers.0.post_attention_layernorm.weight'),
        }
      : undefined;
    for (let i = first ? 1 : 0; i < c.numLayers; i++) plain.push(await loadPreparedLayer(src, denseLayerNames(draftLayer(i)), c, gemm));
    return {
      async fc(aux, T, hooks) {
        hooks.linearInputs(['fc'], aux, T, e.auxLayerIds.length * H);
        const [y] = (await fc!.run(aux, T)) as [Float32Array];
        return y.slice(0, T * H);
      },
      async run(emb, x, T, cos, sin, hooks) {
        let h: Float32Array = x.slice(0, T * H);
        if (first) {
          const lh = layerHooks(l0, hooks);
          const eN = rmsnorm(emb, T, H, first.inputNorm, c.rmsNormEps);
          const xN = rmsnorm(rmsnorm(h, T, H, first.inputNorm, c.rmsNormEps), T, H, first.hiddenNorm, c.rmsNormEps);
          const a = new Float32Array(T * 2 * H); // [T, 2H]: cat(input_layernorm(e), hidden_norm(input_layernorm(x)))
          for (let t = 0; t < T; t++) {
            a.set(eN.subarray(t * H, (t + 1) * H), t * 2 * H);
            a.set(xN.subarray(t * H, (t + 1) * H), t * 2 * H + H);
          }
          observeShared(lh, ['q', 'k', 'v'], a, T, 2 * H);
          const [q, k, v] = (await first.qkv.run(a, T)).map((y) => y.slice()) as [Float32Array, Float32Array, Float32Array]; // [T, nH*d], [T, nKV*d] x2
          applyRope(q, T, nH, d, cos, sin);
          applyRope(k, T, nKV, d, cos, sin);
          lh.keysValues!(k, v, T);
          const att = attention(q, k, v, T, nH, nKV, d); // [T, nH*d], causal
          lh.linearInput!('o', att, T, nH * d);
          const [o] = (await first.o.run(att, T)) as [Float32Array];
          for (let i = 0; i < T * H; i++) h[i] = h[i]! + o[i]!;
          const x2 = rmsnorm(h, T, H, first.postNorm, c.rmsNormEps);
          const dn = await swiGluMlp(x2, T, H, I, first.gateUp, first.down, lh);
          for (let i = 0; i < T * H; i++) h[i] = h[i]! + dn[i]!;
        }
        for (let j = 0; j < plain.length; j++) {
          const layout = draftLayer(j + (first ? 1 : 0));
          h = await decoderLayer(h, T, plain[j]!, c, cos, sin, layerHooks(layout, hooks));
        }
        const out = finalNorm ? rmsnorm(h, T, H, finalNorm, c.rmsNormEps) : h;
        hooks.linearInputs(['lm_head'], out, T, H);
      },
      release: async () => {
        await groups.release();
        await Promise.all(plain.map((p) => p.release()));
      },
    };
  } catch (err) {
    await groups.release();
    await Promise.all(plain.map((p) => p.release()));
    throw err;
  }
}

/**
 * The draft's config.json as ModelOpt's EAGLE exporter writes it: its Llama template, every field
 * taken from the draft's eagle_config, else the draft's config, else the target's (null when none
 * has it), `rope_theta` from `rope_scaling` when only that has it; then the nested
 * `quantization_config` (the hf_quant_config object itself, not the flat form a full export uses).
 */
export function eagleExportConfig(draft: Record<string, PyValue>, target: Record<string, PyValue>, e: EagleConfig, quant: PyValue): Record<string, PyValue> {
  const ec = (draft.eagle_config && typeof draft.eagle_config === 'object' && !Array.isArray(draft.eagle_config) ? draft.eagle_config : {}) as Record<string, PyValue>;
  const pick = (k: string): PyValue => {
    for (const src of [ec, draft, target]) {
      const v = src[k] ?? (k === 'torch_dtype' ? src.dtype : undefined);
      if (v !== undefined && v !== null) return v;
    }
    return null;
  };
  const out: Record<string, PyValue> = {};
  const template: [string, PyValue | undefined][] = [
    ['architectures', ['LlamaForCausalLMEagle3']],
    ...['bos_token_id', 'eos_token_id', 'hidden_act', 'hidden_size', 'initializer_range', 'intermediate_size', 'max_position_embeddings'].map((k): [string, undefined] => [k, undefined]),
    ['model_type', 'llama'],
    ...['num_attention_heads', 'num_key_value_heads', 'num_hidden_layers', 'pad_token_id', 'rms_norm_eps'].map((k): [string, undefined] => [k, undefined]),
    ['tie_word_embeddings', false],
    ...['torch_dtype', 'transformers_version', 'use_cache', 'vocab_size', 'draft_vocab_size', 'rope_scaling', 'attention_bias', 'attention_dropout', 'head_dim', 'mlp_bias', 'pretraining_tp', 'rope_theta'].map((k): [string, undefined] => [k, undefined]),
  ];
  for (const [k, fixed] of template) out[k] = fixed !== undefined ? fixed : pick(k);
  out.draft_vocab_size = out.draft_vocab_size ?? e.draftVocab;
  const rs = out.rope_scaling;
  if (out.rope_theta === null && rs && typeof rs === 'object' && !Array.isArray(rs)) out.rope_theta = (rs as Record<string, PyValue>).rope_theta ?? null;
  const sub: Record<string, PyValue> = {};
  for (const k of ['eagle_aux_hidden_state_layer_ids', 'use_aux_hidden_state', 'use_input_layernorm_in_first_layer', 'use_last_layernorm', 'use_mtp_layernorm']) sub[k] = pick(k);
  if (e.useAux) sub.eagle_aux_hidden_state_layer_ids = [...e.auxLayerIds];
  sub.use_aux_hidden_state = e.useAux;
  sub.next_layer_regular = true;
  sub.parallel_draft_step = pick('parallel_draft_step');
  sub.parallel_draft_heads_num_layers = pick('parallel_draft_heads_num_layers');
  out.eagle_config = sub;
  out.quantization_config = quant;
  return out;
}
