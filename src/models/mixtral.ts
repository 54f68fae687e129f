import { intField, moeFamily } from './moe.js';

/**
 * Mixtral (8x7B, 8x22B): every layer sparse, `block_sparse_moe.experts.{e}.w1` (gate), `w3` (up),
 * `w2` (down) and the router `block_sparse_moe.gate`; softmax top-k, the top-k weights always
 * renormalized (transformers' MixtralTopKRouter).
 */
export const mixtral = moeFamily({
  modelType: 'mixtral',
  family: 'Mixtral',
  block: 'block_sparse_moe',
  leaves: { gate: 'w1', up: 'w3', down: 'w2' },
  parseMoe: (raw, base, path) => ({
    numExperts: intField(raw, ['num_local_experts'], path),
    topK: intField(raw, ['num_experts_per_tok'], path),
    normTopKProb: true,
    expertIntermediateSize: base.intermediateSize,
    sparseLayers: Array.from({ length: base.numLayers }, () => true),
  }),
});
