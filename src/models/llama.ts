import { DenseDecoder } from './base.js';

/** Llama 2 / 3.1 / 3.3 (llama3 rope scaling, tied or untied head). */
export const llama = new DenseDecoder('llama', 'Llama', true);
