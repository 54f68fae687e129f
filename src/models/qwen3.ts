import { denseFamily } from './dense.js';

/** Qwen3 dense: q_norm/k_norm inside attention and an explicit head_dim (may differ from hidden/heads). */
export const qwen3 = denseFamily({ modelType: 'qwen3', family: 'Qwen3', foldsIntoPreviousLinear: true });
