/**
 * DeepSeek V3 / R1 (`deepseek_v3`):
 *   per layer: input_layernorm, MLA self_attn.{q_a_proj, q_a_layernorm, q_b_proj (or q_proj),
 *              kv_a_proj_with_mqa, kv_a_layernorm, kv_b_proj, o_proj}, post_attention_layernorm, then
 *              layers < first_k_dense_replace: mlp.{gate,up,down}_proj
 *              others: mlp.gate (router, + e_score_correction_bias), mlp.experts.{e}.{gate,up,down}_proj,
 *                      mlp.shared_experts.{gate,up,down}_proj
 *   outside:   model.embed_tokens, model.norm, lm_head
 * Export follows ModelOpt's DeepSeek NVFP4 recipe (families.md §6.4): experts, shared experts,
 * dense MLPs and o_proj in NVFP4; q_a_proj, q_b_proj, kv_a_proj_with_mqa and kv_b_proj kept in 16
 * bits and listed per layer; the router neither quantized nor listed.
 */
import type { DeepseekConfig, ModelConfig } from '../forward/config.js';
import { deepseekDecoderLayer, deepseekDenseOverSamples, deepseekLayerOverSamples, loadPreparedDeepseekLayer, type DeepseekLayerNames, type PreparedDeepseekLayer } from '../forward/deepseek.js';
import { CheckpointError } from '../errors.js';
import { parseModelConfig } from './config.js';
import type { LayerLayout, ModelFamily } from './base.js';
import { expertLayout, intField } from './moe.js';

function parseDeepseek(raw: Record<string, unknown>, path: string): DeepseekConfig {
  const num = (key: string, fallback?: number): number => {
    const v = raw[key] ?? fallback;
    if (typeof v !== 'number' || !(v > 0)) throw new CheckpointError(path, `"${key}" must be a positive number, got ${JSON.stringify(raw[key])}`);
    return v;
  };
  const qLoraRank = raw.q_lora_rank == null ? null : intField(raw, ['q_lora_rank'], path);
  const nope = intField(raw, ['qk_nope_head_dim'], path), rope = intField(raw, ['qk_rope_head_dim'], path);
  const E = intField(raw, ['n_routed_experts'], path);
  const nGroup = intField(raw, ['n_group'], path, 1);
  if (E % nGroup !== 0) throw new CheckpointError(path, `n_routed_experts ${E} is not a multiple of n_group ${nGroup}`);
  // YaRN with mscale_all_dim: the softmax scale times mscale^2, mscale = 0.1 * mscale_all_dim * ln(factor) + 1
  let attentionScale = 1 / Math.sqrt(nope + rope);
  const rs = (raw.rope_scaling ?? raw.rope_parameters) as Record<string, unknown> | null | undefined;
  if (rs && String(rs.rope_type ?? rs.type) === 'yarn' && Number(rs.mscale_all_dim ?? 0)) {
    const factor = Number(rs.factor);
    const mscale = factor <= 1 ? 1 : 0.1 * Number(rs.mscale_all_dim) * Math.log(factor) + 1;
    attentionScale *= mscale * mscale;
  }
  return {
    qLoraRank,
    kvLoraRank: intField(raw, ['kv_lora_rank'], path),
    qkNopeHeadDim: nope,
    qkRopeHeadDim: rope,
    vHeadDim: intField(raw, ['v_head_dim'], path),
    ropeInterleave: raw.rope_interleave !== false,
    attentionScale,
    firstKDenseReplace: raw.first_k_dense_replace == null ? 0 : Number(raw.first_k_dense_replace),
    nRoutedExperts: E,
    nSharedExperts: intField(raw, ['n_shared_experts'], path, 1),
    moeIntermediateSize: intField(raw, ['moe_intermediate_size'], path),
    topK: intField(raw, ['num_experts_per_tok'], path),
    nGroup,
    topkGroup: intField(raw, ['topk_group'], path, 1),
    normTopKProb: raw.norm_topk_prob === true,
    routedScalingFactor: num('routed_scaling_factor', 1),
    numNextnPredictLayers: raw.num_nextn_predict_layers == null ? 0 : Number(raw.num_nextn_predict_layers),
  };
}

const dsOf = (cfg: ModelConfig): DeepseekConfig => {
  if (!cfg.deepseek) throw new Error('DeepSeek: config has no DeepSeek settings');
  return cfg.deepseek;
};

function layout(i: number, cfg: ModelConfig): LayerLayout {
  const ds = dsOf(cfg);
  const p = `model.layers.${i}`;
  const a = `${p}.self_attn`;
  const m = `${p}.mlp`;
  const attn = ds.qLoraRank === null ? [['q', `${a}.q_proj`]] : [['q_a', `${a}.q_a_proj`], ['q_b', `${a}.q_b_proj`]];
  attn.push(['kv_a', `${a}.kv_a_proj_with_mqa`], ['kv_b', `${a}.kv_b_proj`], ['o', `${a}.o_proj`]);
  const linears = attn.map(([, n]) => n!);
  const roles = attn.map(([r]) => r!);
  // MLA projections stay in 16 bits in ModelOpt's DeepSeek recipe (§6.4); o_proj is quantized
  const keep = linears.filter((n) => !n.endsWith('.o_proj'));
  const base = { index: i, prefix: p, attention: a, linearFolds: [], keep };
  if (i < ds.firstKDenseReplace) {
    const [g, u, d] = [`${m}.gate_proj`, `${m}.up_proj`, `${m}.down_proj`];
    return { ...base, linears: [...linears, g, u, d], roles: [...roles, 'gate', 'up', 'down'], groups: [{ members: [g, u], norm: `${p}.post_attention_layernorm` }] };
  }
  const ex = expertLayout(`${m}.experts`, { gate: 'gate_proj', up: 'up_proj', down: 'down_proj' }, ds.nRoutedExperts);
  const s = `${m}.shared_experts`;
  const [sg, su, sd] = [`${s}.gate_proj`, `${s}.up_proj`, `${s}.down_proj`];
  return {
    ...base,
    linears: [...linears, ...ex.linears, sg, su, sd],
    roles: [...roles, ...ex.roles, 'shared.gate', 'shared.up', 'shared.down'],
    groups: [...ex.groups, { members: [sg, su] }],
    sharedWeightScale: ex.sharedWeightScale,
    sharedInputScale: ex.sharedInputScale,
    expertLists: ex.expertLists,
    observed: { router: `${m}.gate` },
  };
}

function names(l: LayerLayout): DeepseekLayerNames {
  const role = (r: string) => (l.roles.includes(r) ? l.linears[l.roles.indexOf(r)]! : undefined);
  const a = l.attention;
  const base = {
    q: role('q'),
    qA: role('q_a'),
    qANorm: role('q_a') && `${a}.q_a_layernorm.weight`,
    qB: role('q_b'),
    kvA: role('kv_a')!,
    kvANorm: `${a}.kv_a_layernorm.weight`,
    kvB: role('kv_b')!,
    o: role('o')!,
    inputNorm: `${l.prefix}.input_layernorm.weight`,
    postNorm: `${l.prefix}.post_attention_layernorm.weight`,
  };
  if (!l.observed?.router) return { ...base, mlp: { kind: 'dense', gate: role('gate')!, up: role('up')!, down: role('down')! } };
  const experts: { gate: string; up: string; down: string }[] = [];
  for (let e = 0; role(`e${e}.gate`); e++) experts.push({ gate: role(`e${e}.gate`)!, up: role(`e${e}.up`)!, down: role(`e${e}.down`)! });
  const r = l.observed.router;
  return { ...base, mlp: { kind: 'moe', router: r, bias: `${r}.e_score_correction_bias`, experts, shared: { gate: role('shared.gate')!, up: role('shared.up')!, down: role('shared.down')! } } };
}

export const deepseek_v3: ModelFamily = {
  modelType: 'deepseek_v3',
  family: 'DeepSeek V3',
  parseConfig: (raw, path) => {
    const ds = parseDeepseek(raw, path);
    // the rope tables cover the rope part of a head only
    return { ...parseModelConfig({ ...raw, head_dim: ds.qkRopeHeadDim }, path), deepseek: ds };
  },
  names: { embed: 'model.embed_tokens', finalNorm: 'model.norm.weight', lmHead: 'lm_head' },
  alwaysExcluded: ['lm_head'],
  formats: ['nvfp4'],
  kvScalesUnsupported: "MLA has no k_proj / v_proj for k_scale / v_scale, and ModelOpt's DeepSeek flow writes none (kv_cache_quant_algo FP8 with scale 1.0)",
  extraLayers: (cfg) => Array.from({ length: dsOf(cfg).numNextnPredictLayers }, (_, i) => cfg.numLayers + i),
  awqUnsupported: "ModelOpt's DeepSeek flow exports NVFP4 only",
  layer: layout,
  linearShape(module: string, cfg: ModelConfig): [number, number] | undefined {
    const ds = dsOf(cfg), h = cfg.hiddenSize, nH = cfg.numHeads;
    const qk = ds.qkNopeHeadDim + ds.qkRopeHeadDim;
    const leaf = module.slice(module.lastIndexOf('.') + 1);
    const I = module.includes('.experts.') ? ds.moeIntermediateSize : module.includes('.shared_experts.') ? ds.moeIntermediateSize * ds.nSharedExperts : cfg.intermediateSize;
    switch (leaf) {
      case 'q_proj':
        return [nH * qk, h];
      case 'q_a_proj':
        return [ds.qLoraRank!, h];
      case 'q_b_proj':
        return [nH * qk, ds.qLoraRank!];
      case 'kv_a_proj_with_mqa':
        return [ds.kvLoraRank + ds.qkRopeHeadDim, h];
      case 'kv_b_proj':
        return [nH * (ds.qkNopeHeadDim + ds.vHeadDim), ds.kvLoraRank];
      case 'o_proj':
        return [h, nH * ds.vHeadDim];
      case 'gate_proj':
      case 'up_proj':
        return [I, h];
      case 'down_proj':
        return [h, I];
      default:
        return undefined;
    }
  },
  forward: {
    load: (src, l, cfg, gemm) => loadPreparedDeepseekLayer(src, names(l), cfg, dsOf(cfg), gemm),
    run: (h, T, l, cfg, cos, sin, hooks) => deepseekDecoderLayer(h, T, l as PreparedDeepseekLayer, cfg, dsOf(cfg), cos, sin, hooks),
    async overSamples(src, l, cfg, gemm, states, cos, sin, hooks) {
      const n = names(l);
      if (n.mlp.kind === 'moe') return deepseekLayerOverSamples(src, n, cfg, dsOf(cfg), gemm, states, cos, sin, hooks);
      return deepseekDenseOverSamples(src, n, cfg, dsOf(cfg), gemm, states, cos, sin, hooks);
    },
  },
};
