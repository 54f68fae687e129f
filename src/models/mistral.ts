import { denseFamily } from './dense.js';

/** Mistral 7B-style: Llama layout; ModelOpt's fold-into-previous-linear list does not include it. */
export const mistral = denseFamily({ modelType: 'mistral', family: 'Mistral', foldsIntoPreviousLinear: false });
