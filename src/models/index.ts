import { UnsupportedModelError } from '../errors.js';
import type { Architecture } from './base.js';
import { llama } from './llama.js';
import { qwen2 } from './qwen2.js';
import { qwen3 } from './qwen3.js';
import { mistral } from './mistral.js';

export * from './base.js';
export * from './config.js';

export const ARCHITECTURES: Record<string, Architecture> = { llama, qwen2, qwen3, mistral };

export function architectureFor(modelType: unknown, where: string): Architecture {
  const arch = typeof modelType === 'string' ? ARCHITECTURES[modelType] : undefined;
  if (!arch) {
    throw new UnsupportedModelError(
      `${where}: model_type ${JSON.stringify(modelType)} is not supported; supported: ${Object.keys(ARCHITECTURES).join(', ')}`,
    );
  }
  return arch;
}
