import { UnsupportedModelError } from '../errors.js';
import type { ModelFamily } from './base.js';
import { llama } from './llama.js';
import { qwen2 } from './qwen2.js';
import { qwen3 } from './qwen3.js';
import { mistral } from './mistral.js';
import { mixtral } from './mixtral.js';
import { qwen3_moe } from './qwen3_moe.js';
import { llama4, llama4_text } from './llama4.js';
import { deepseek_v3 } from './deepseek.js';

export * from './base.js';
export * from './config.js';
export { denseFamily, denseLayerNames, type DenseFamilyOptions } from './dense.js';
export { moeFamily, type MoeFamilyOptions } from './moe.js';

/** Every family rxquant reads, by config.json's model_type. A new family: one file, and its line here. */
export const FAMILIES: Record<string, ModelFamily> = { llama, qwen2, qwen3, mistral, mixtral, qwen3_moe, llama4_text, llama4, deepseek_v3 };
/** The older name of FAMILIES. */
export const ARCHITECTURES = FAMILIES;

export function architectureFor(modelType: unknown, where: string): ModelFamily {
  const arch = typeof modelType === 'string' && Object.hasOwn(FAMILIES, modelType) ? FAMILIES[modelType] : undefined;
  if (!arch) {
    throw new UnsupportedModelError(
      `${where}: model_type ${JSON.stringify(modelType)} is not supported; supported: ${Object.keys(FAMILIES).join(', ')}`,
    );
  }
  return arch;
}
