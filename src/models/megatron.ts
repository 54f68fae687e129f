/**
 * Megatron-Core GPT checkpoints (Transformer-Engine layer spec) read as the Hugging Face tensors of
 * the dense families, as views over the torch_dist keys (spec megatron.md §7), nothing copied:
 *
 *   embedding.word_embeddings.weight [V_pad, H]          -> model.embed_tokens.weight, rows [0, V)
 *   decoder.layers.self_attention.linear_qkv.weight[l]   -> q_proj, k_proj, v_proj: per query group g,
 *        rows [hpg query heads | 1 key head | 1 value head] of head_dim rows each (hpg = heads / groups)
 *   decoder.layers.self_attention.linear_qkv.bias[l]     -> q/k/v_proj.bias, the same rows (Qwen2)
 *   decoder.layers.self_attention.linear_qkv.layer_norm_weight[l] -> input_layernorm.weight
 *   decoder.layers.self_attention.{q,k}_layernorm.weight[l]       -> self_attn.{q,k}_norm.weight (Qwen3)
 *   decoder.layers.self_attention.linear_proj.weight[l]  -> o_proj.weight
 *   decoder.layers.mlp.linear_fc1.layer_norm_weight[l]   -> post_attention_layernorm.weight
 *   decoder.layers.mlp.linear_fc1.weight[l] = [gate; up] -> gate_proj (rows [0, I)), up_proj ([I, 2I))
 *   decoder.layers.mlp.linear_fc2.weight[l]              -> down_proj.weight
 *   decoder.final_layernorm.weight                       -> model.norm.weight
 *   output_layer.weight [V_pad, H]                       -> lm_head.weight, rows [0, V) (absent when tied)
 *
 * Layers are stacked ([L, ...], layer l at row l) or per layer (`decoder.layers.{l}.`); NeMo 2's
 * `module.` prefix is dropped. Shapes are checked against the HF config.json given with the
 * checkpoint; a mismatch names the key.
 */
import { CheckpointError } from '../errors.js';
import type { ModelConfig } from '../forward/config.js';
import type { DcpCheckpoint } from '../sources/dcp.js';
import type { TensorSource } from '../sources/source.js';
import { expertSlice, rowRange, rowRuns } from '../sources/views.js';

export interface MegatronTensors {
  tensors: Map<string, TensorSource>;
  /** What the reader did that the user should know (a padded vocabulary trimmed). */
  notes: string[];
}

export function megatronToHf(dcp: DcpCheckpoint, cfg: ModelConfig, configPath: string): MegatronTensors {
  const where = dcp.dir;
  const model = [...dcp.tensors.keys()].filter((k) => !k.startsWith('optimizer.') && !k.startsWith('rng_state') && !k.startsWith('rerun_state'));
  const prefix = model.length > 0 && model.every((k) => k.startsWith('module.')) ? 'module.' : '';
  const get = (key: string) => dcp.tensors.get(prefix + key);
  const need = (key: string) => {
    const t = get(key);
    if (!t) throw new CheckpointError(where, `torch_dist key "${prefix + key}" is missing (a Megatron-Core GPT checkpoint with the Transformer-Engine layer spec has it)`);
    return t;
  };
  const expectShape = (t: TensorSource, shape: number[], why: string) => {
    if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
      throw new CheckpointError(where, `torch_dist key "${t.name}" has shape [${t.shape.join(', ')}], expected [${shape.join(', ')}] (${why}, from ${configPath})`);
    }
  };
  const H = cfg.hiddenSize, L = cfg.numLayers, nh = cfg.numHeads, ng = cfg.numKvHeads, hd = cfg.headDim, I = cfg.intermediateSize, V = cfg.vocabSize;
  const hpg = nh / ng;
  const out = new Map<string, TensorSource>();
  const notes: string[] = [];

  // a layer's tensor: row l of a stacked key, or the per-layer key
  const layerTensor = (l: number, rest: string, hfName: string, optional = false): TensorSource | undefined => {
    const stacked = get(`decoder.layers.${rest}`);
    if (stacked) {
      if (stacked.shape[0] !== L) throw new CheckpointError(where, `torch_dist key "${stacked.name}" stacks ${stacked.shape[0]} layers, config.json says num_hidden_layers ${L} (${configPath})`);
      return expertSlice(stacked, l, hfName);
    }
    const own = get(`decoder.layers.${l}.${rest}`);
    if (own) return rowRange(own, 0, own.rows, hfName);
    if (optional) return undefined;
    throw new CheckpointError(where, `torch_dist key "${prefix}decoder.layers.${rest}" (or "decoder.layers.${l}.${rest}") is missing`);
  };
  const anyLayer = (rest: string) => get(`decoder.layers.${rest}`) ?? get(`decoder.layers.0.${rest}`);

  const vocabRows = (key: string, hfName: string) => {
    const t = need(key);
    if (t.shape.length !== 2 || t.shape[1] !== H) expectShape(t, [t.shape[0] ?? V, H], 'hidden_size');
    if (t.shape[0]! < V) throw new CheckpointError(where, `torch_dist key "${t.name}" has ${t.shape[0]} vocabulary rows, fewer than config.json's vocab_size ${V} (${configPath})`);
    if (t.shape[0]! > V) notes.push(`${t.name}: ${t.shape[0]} rows (a vocabulary padded for tensor parallelism) trimmed to vocab_size ${V}, as Megatron-Bridge does`);
    return rowRange(t, 0, V, hfName);
  };
  out.set('model.embed_tokens.weight', vocabRows('embedding.word_embeddings.weight', 'model.embed_tokens.weight'));

  const qkv = anyLayer('self_attention.linear_qkv.weight');
  if (qkv) expectShape(qkv, [...(get('decoder.layers.self_attention.linear_qkv.weight') ? [L] : []), (nh + 2 * ng) * hd, H], '(heads + 2 x kv heads) x head_dim rows, hidden_size columns');
  const fc1 = anyLayer('mlp.linear_fc1.weight');
  if (fc1) expectShape(fc1, [...(get('decoder.layers.mlp.linear_fc1.weight') ? [L] : []), 2 * I, H], 'gate and up: 2 x intermediate_size rows');
  // rows of q, k and v inside one layer's fused qkv (in head_dim units, per query group)
  const runs = (which: 'q' | 'k' | 'v') =>
    Array.from({ length: ng }, (_, g) => {
      const base = (hpg + 2) * g + (which === 'q' ? 0 : which === 'k' ? hpg : hpg + 1);
      return [base * hd, (which === 'q' ? hpg : 1) * hd] as const;
    });
  for (let l = 0; l < L; l++) {
    const p = `model.layers.${l}`;
    const norm = (hf: string, te: string, local: string) => {
      const t = layerTensor(l, te, hf, true) ?? layerTensor(l, local, hf, true);
      if (!t) throw new CheckpointError(where, `torch_dist key "${prefix}decoder.layers.${te}" (or "${local}") is missing`);
      out.set(hf, t);
    };
    norm(`${p}.input_layernorm.weight`, 'self_attention.linear_qkv.layer_norm_weight', 'input_layernorm.weight');
    norm(`${p}.post_attention_layernorm.weight`, 'mlp.linear_fc1.layer_norm_weight', 'pre_mlp_layernorm.weight');
    const w = layerTensor(l, 'self_attention.linear_qkv.weight', `${p}.self_attn.qkv`)!;
    for (const x of ['q', 'k', 'v'] as const) out.set(`${p}.self_attn.${x}_proj.weight`, rowRuns(w, runs(x), `${p}.self_attn.${x}_proj.weight`));
    const b = layerTensor(l, 'self_attention.linear_qkv.bias', `${p}.self_attn.qkv_bias`, true);
    if (b) for (const x of ['q', 'k', 'v'] as const) out.set(`${p}.self_attn.${x}_proj.bias`, rowRuns(b, runs(x), `${p}.self_attn.${x}_proj.bias`));
    for (const [te, hf] of [['q_layernorm', 'q_norm'], ['k_layernorm', 'k_norm']] as const) {
      const t = layerTensor(l, `self_attention.${te}.weight`, `${p}.self_attn.${hf}.weight`, true);
      if (t) out.set(`${p}.self_attn.${hf}.weight`, t);
    }
    out.set(`${p}.self_attn.o_proj.weight`, layerTensor(l, 'self_attention.linear_proj.weight', `${p}.self_attn.o_proj.weight`)!);
    const f = layerTensor(l, 'mlp.linear_fc1.weight', `${p}.mlp.fc1`)!;
    out.set(`${p}.mlp.gate_proj.weight`, rowRange(f, 0, I, `${p}.mlp.gate_proj.weight`));
    out.set(`${p}.mlp.up_proj.weight`, rowRange(f, I, 2 * I, `${p}.mlp.up_proj.weight`));
    out.set(`${p}.mlp.down_proj.weight`, layerTensor(l, 'mlp.linear_fc2.weight', `${p}.mlp.down_proj.weight`)!);
  }
  const fn = need('decoder.final_layernorm.weight');
  out.set('model.norm.weight', rowRange(fn, 0, fn.rows, 'model.norm.weight'));
  if (get('output_layer.weight')) out.set('lm_head.weight', vocabRows('output_layer.weight', 'lm_head.weight'));
  else if (!cfg.tieWordEmbeddings) throw new CheckpointError(where, `torch_dist key "${prefix}output_layer.weight" is missing, and config.json does not tie word embeddings (${configPath})`);
  return { tensors: out, notes };
}
