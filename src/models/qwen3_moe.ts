import { CheckpointError } from '../errors.js';
import { intField, moeFamily } from './moe.js';

/**
 * Qwen3-MoE (30B-A3B, 235B-A22B): q/k norm attention as Qwen3; `mlp.experts.{e}.{gate,up,down}_proj`
 * and the router `mlp.gate`; softmax top-k, renormalized when `norm_topk_prob`. A layer is sparse
 * unless listed in `mlp_only_layers`, and when (i + 1) is a multiple of `decoder_sparse_step`;
 * others have a dense `mlp.{gate,up,down}_proj` of `intermediate_size`.
 */
export const qwen3_moe = moeFamily({
  modelType: 'qwen3_moe',
  family: 'Qwen3-MoE',
  block: 'mlp',
  leaves: { gate: 'gate_proj', up: 'up_proj', down: 'down_proj' },
  parseMoe: (raw, base, path) => {
    const step = intField(raw, ['decoder_sparse_step'], path, 1);
    const only = raw.mlp_only_layers ?? [];
    if (!Array.isArray(only) || !only.every((x) => Number.isInteger(x))) throw new CheckpointError(path, '"mlp_only_layers" must be a list of layer indices');
    return {
      // transformers 4 writes num_experts, transformers 5 num_local_experts
      numExperts: intField(raw, ['num_experts', 'num_local_experts'], path),
      topK: intField(raw, ['num_experts_per_tok'], path),
      normTopKProb: raw.norm_topk_prob === true,
      expertIntermediateSize: intField(raw, ['moe_intermediate_size'], path),
      sparseLayers: Array.from({ length: base.numLayers }, (_, i) => !only.includes(i) && (i + 1) % step === 0),
    };
  },
});
