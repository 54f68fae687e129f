import { denseFamily } from './dense.js';

/** Qwen2 / Qwen2.5: as Llama, with biases on q/k/v (handled generically: a `.bias` travels with its linear). */
export const qwen2 = denseFamily({ modelType: 'qwen2', family: 'Qwen2', foldsIntoPreviousLinear: false });
