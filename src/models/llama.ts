import { denseFamily } from './dense.js';

/** Llama 2 / 3.1 / 3.3 (llama3 rope scaling, tied or untied head). */
export const llama = denseFamily({ modelType: 'llama', family: 'Llama', foldsIntoPreviousLinear: true });
