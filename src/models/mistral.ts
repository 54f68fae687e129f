import { DenseDecoder } from './base.js';

/** Mistral 7B-style: Llama layout; ModelOpt's fold-into-previous-linear list does not include it. */
export const mistral = new DenseDecoder('mistral', 'Mistral', false);
