import { DenseDecoder } from './base.js';

/** Qwen2 / Qwen2.5: as Llama, with biases on q/k/v (handled generically: a `.bias` travels with its linear). */
export const qwen2 = new DenseDecoder('qwen2', 'Qwen2', false);
