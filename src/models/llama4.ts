/**
 * Llama 4 text models (`llama4_text`: Llama4ForCausalLM; Scout and Maverick's language model):
 *   per layer: input_layernorm, self_attn.{q,k,v,o}_proj (RoPE layers: interleaved RoPE, L2 qk norm,
 *              chunked attention; NoPE layers: full attention, temperature-tuned queries),
 *              post_attention_layernorm, then on MoE layers
 *                feed_forward.router [E, H]                        never quantized, always excluded
 *                feed_forward.experts.gate_up_proj [E, H, 2I]      fused 3-D parameters, input-major,
 *                feed_forward.experts.down_proj [E, I, H]          quantized whole (one scale set each)
 *                feed_forward.shared_expert.{gate,up,down}_proj    a plain SwiGLU MLP
 *              and on the others feed_forward.{gate,up,down}_proj (intermediate_size_mlp)
 *   outside:   model.embed_tokens, model.norm, lm_head
 * Calibration: every expert sees every token scaled by its router score (spec families.md §1.4), and
 * the fused parameters get one input statistic each (`...experts.gate_up_proj.input_amax`).
 */
import type { Llama4Config, ModelConfig } from '../forward/config.js';
import { llama4DecoderLayer, llama4LayerOverSamples, loadPreparedLlama4Layer, type Llama4LayerNames, type PreparedLlama4Layer } from '../forward/llama4.js';
import { CheckpointError } from '../errors.js';
import { parseModelConfig } from './config.js';
import type { LayerLayout, ModelFamily } from './base.js';
import { intField } from './moe.js';

function parseLlama4(raw: Record<string, unknown>, base: ModelConfig, path: string): Llama4Config {
  const L = base.numLayers;
  const list = (key: string): unknown[] | undefined => {
    const v = raw[key];
    if (v == null) return undefined;
    if (!Array.isArray(v)) throw new CheckpointError(path, `"${key}" must be a list`);
    return v;
  };
  const interval = intField(raw, ['no_rope_layer_interval'], path, 4);
  const noRope = list('no_rope_layers') ?? Array.from({ length: L }, (_, i) => ((i + 1) % interval !== 0 ? 1 : 0));
  if (noRope.length !== L) throw new CheckpointError(path, `"no_rope_layers" has ${noRope.length} entries for ${L} layers`);
  const rope = noRope.map((x) => x === 1 || x === true);
  const types = list('layer_types') ?? rope.map((r) => (r ? 'chunked_attention' : 'full_attention'));
  const chunkSize = raw.attention_chunk_size == null ? undefined : intField(raw, ['attention_chunk_size'], path);
  const step = intField(raw, ['interleave_moe_layer_step'], path, 1);
  const moeLayers = list('moe_layers') ?? Array.from({ length: L }, (_, i) => i).filter((i) => i % step === step - 1);
  const temperature = raw.attn_temperature_tuning === false ? undefined : { floorScale: Number(raw.floor_scale ?? 8192), attnScale: Number(raw.attn_scale ?? 0.1) };
  return {
    rope,
    chunk: types.map((t) => (t === 'chunked_attention' ? chunkSize : undefined)),
    qkNorm: raw.use_qk_norm !== false,
    temperature,
    moe: Array.from({ length: L }, (_, i) => moeLayers.includes(i)),
    numExperts: intField(raw, ['num_local_experts'], path),
    topK: intField(raw, ['num_experts_per_tok'], path, 1),
    expertIntermediateSize: base.intermediateSize,
    denseIntermediateSize: intField(raw, ['intermediate_size_mlp'], path, base.intermediateSize),
  };
}

const l4Of = (cfg: ModelConfig): Llama4Config => {
  if (!cfg.llama4) throw new Error('Llama 4: config has no Llama 4 settings');
  return cfg.llama4;
};

const layoutWith = (prefix: string) => (i: number, cfg: ModelConfig): LayerLayout => {
  const p = `${prefix}model.layers.${i}`;
  const a = `${p}.self_attn`;
  const f = `${p}.feed_forward`;
  const [q, k, v, o] = ['q', 'k', 'v', 'o'].map((r) => `${a}.${r}_proj`) as [string, string, string, string];
  const base = { index: i, prefix: p, attention: a, linearFolds: [] };
  if (!l4Of(cfg).moe[i]) {
    const [g, u, d] = ['gate', 'up', 'down'].map((r) => `${f}.${r}_proj`) as [string, string, string];
    return { ...base, linears: [q, k, v, o, g, u, d], roles: ['q', 'k', 'v', 'o', 'gate', 'up', 'down'], groups: [{ members: [q, k, v], norm: `${p}.input_layernorm` }, { members: [g, u], norm: `${p}.post_attention_layernorm` }] };
  }
  const s = `${f}.shared_expert`;
  const [g, u, d] = ['gate', 'up', 'down'].map((r) => `${s}.${r}_proj`) as [string, string, string];
  return {
    ...base,
    linears: [q, k, v, o, g, u, d],
    roles: ['q', 'k', 'v', 'o', 'shared.gate', 'shared.up', 'shared.down'],
    groups: [{ members: [q, k, v], norm: `${p}.input_layernorm` }, { members: [g, u] }],
    excluded: [`${f}.router`],
    observed: { router: `${f}.router`, 'experts.gate_up': `${f}.experts.gate_up_proj`, 'experts.down': `${f}.experts.down_proj` },
    fusedExperts: [`${f}.experts.gate_up_proj`, `${f}.experts.down_proj`],
  };
};

function names(l: LayerLayout): Llama4LayerNames {
  const role = (r: string) => l.linears[l.roles.indexOf(r)]!;
  const base = { q: role('q'), k: role('k'), v: role('v'), o: role('o'), inputNorm: `${l.prefix}.input_layernorm.weight`, postNorm: `${l.prefix}.post_attention_layernorm.weight` };
  if (!l.fusedExperts) return { ...base, mlp: { kind: 'dense', gate: role('gate'), up: role('up'), down: role('down') } };
  return {
    ...base,
    mlp: { kind: 'moe', router: l.observed!.router!, gateUp: l.fusedExperts[0]!, down: l.fusedExperts[1]!, shared: { gate: role('shared.gate'), up: role('shared.up'), down: role('shared.down') } },
  };
}

/**
 * A Llama 4 family: `prefix` '' for the text-only checkpoint (Llama4ForCausalLM), 'language_model.'
 * for the multimodal one (Llama4ForConditionalGeneration: the text config under `text_config`, the
 * vision tower and projector copied unchanged and excluded as ModelOpt excludes them).
 */
function llama4Family(modelType: string, prefix: string, nested: string | undefined, untouchedPrefixes: string[]): ModelFamily {
  return {
  modelType,
  family: 'Llama 4',
  parseConfig: (top, path) => {
    let raw = top;
    if (nested) {
      const t = top[nested];
      if (t === null || typeof t !== 'object' || Array.isArray(t)) throw new CheckpointError(path, `"${nested}" is missing or not an object`);
      raw = t as Record<string, unknown>;
    }
    const base = parseModelConfig(raw, path);
    return { ...base, llama4: parseLlama4(raw, base, path) };
  },
  names: { embed: `${prefix}model.embed_tokens`, finalNorm: `${prefix}model.norm.weight`, lmHead: `${prefix}lm_head` },
  alwaysExcluded: [`${prefix}lm_head`, `${prefix}model.embed_tokens`],
  untouchedPrefixes,
  awqUnsupported: "ModelOpt's AWQ for Llama 4's fused experts is not reproduced yet",
  layer: layoutWith(prefix),
  linearShape(module: string, cfg: ModelConfig): [number, number] | undefined {
    const h = cfg.hiddenSize, l4 = l4Of(cfg);
    const leaf = module.slice(module.lastIndexOf('.') + 1);
    const I = module.includes('.shared_expert.') ? l4.expertIntermediateSize : l4.denseIntermediateSize;
    if (leaf === 'q_proj') return [cfg.numHeads * cfg.headDim, h];
    if (leaf === 'k_proj' || leaf === 'v_proj') return [cfg.numKvHeads * cfg.headDim, h];
    if (leaf === 'o_proj') return [h, cfg.numHeads * cfg.headDim];
    if (leaf === 'gate_proj' || leaf === 'up_proj') return [I, h];
    if (leaf === 'down_proj') return [h, I];
    return undefined;
  },
  forward: {
    load: (src, l, cfg, gemm) => loadPreparedLlama4Layer(src, l.index, names(l), cfg, l4Of(cfg), gemm),
    run: (h, T, l, cfg, cos, sin, hooks) => llama4DecoderLayer(h, T, l as PreparedLlama4Layer, cfg, l4Of(cfg), cos, sin, hooks),
    async overSamples(src, l, cfg, gemm, states, cos, sin, hooks) {
      const n = names(l);
      if (n.mlp.kind === 'moe') return llama4LayerOverSamples(src, l.index, n, cfg, l4Of(cfg), gemm, states, cos, sin, hooks);
      const layer = await loadPreparedLlama4Layer(src, l.index, n, cfg, l4Of(cfg), gemm);
      try {
        for (let i = 0; i < states.count; i++) await states.set(i, await llama4DecoderLayer(await states.get(i), states.tokens(i), layer, cfg, l4Of(cfg), cos, sin, hooks));
      } finally {
        await layer.release();
      }
    },
  },
};
}

export const llama4_text = llama4Family('llama4_text', '', undefined, []);
export const llama4 = llama4Family('llama4', 'language_model.', 'text_config', ['vision_model.', 'multi_modal_projector.']);
