import { DenseDecoder } from './base.js';

/** Qwen3 dense: q_norm/k_norm inside attention and an explicit head_dim (may differ from hidden/heads). */
export const qwen3 = new DenseDecoder('qwen3', 'Qwen3', true);
