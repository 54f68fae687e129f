/**
 * A model family is one module: here a new dense family, declared as README's "Add a model family"
 * shows, is registered and exports a copy of the llama31 reference (config.json's model_type
 * changed) with the same tensors, byte for byte, as the llama family gives the original.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cp, mkdtemp, readFile, rm, writeFile, chmod, readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { exportCheckpoint, loadStats } from '../src/index.js';
import { FAMILIES, denseFamily, architectureFor } from '../src/models/index.js';
import { synthetic } from './helpers.js';

let tmp: string;
beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'rxq-family-'));
});
afterAll(async () => {
  delete FAMILIES.my_llama;
  await rm(tmp, { recursive: true, force: true });
});

describe('model families', () => {
  it('every registered family owns its config parsing, names, layout and forward block', () => {
    for (const [type, f] of Object.entries(FAMILIES)) {
      expect(f.modelType).toBe(type);
      expect(typeof f.parseConfig).toBe('function');
      expect(typeof f.forward.load).toBe('function');
      expect(typeof f.forward.run).toBe('function');
      expect(f.names.embed.length).toBeGreaterThan(0);
    }
  });

  it('a new dense family is one declaration, and exports like the family it copies', async () => {
    FAMILIES.my_llama = denseFamily({ modelType: 'my_llama', family: 'MyLlama', foldsIntoPreviousLinear: true });
    expect(architectureFor('my_llama', 'x').family).toBe('MyLlama');
    const src = join(tmp, 'my-llama');
    await cp(synthetic('llama31'), src, { recursive: true });
    for (const f of await readdir(src)) await chmod(join(src, f), 0o644);
    const cfg = JSON.parse(await readFile(join(src, 'config.json'), 'utf8'));
    cfg.model_type = 'my_llama';
    await writeFile(join(src, 'config.json'), JSON.stringify(cfg));
    const stats = await loadStats(join(synthetic('llama31'), 'reference.safetensors'));
    await exportCheckpoint({ model: src, format: 'nvfp4', out: join(tmp, 'a'), stats, workers: 0 });
    await exportCheckpoint({ model: synthetic('llama31'), format: 'nvfp4', out: join(tmp, 'b'), stats, workers: 0 });
    const a = await readFile(join(tmp, 'a', 'model.safetensors'));
    const b = await readFile(join(tmp, 'b', 'model.safetensors'));
    expect(Buffer.compare(a, b)).toBe(0);
    expect(await readFile(join(tmp, 'a', 'hf_quant_config.json'), 'utf8')).toBe(await readFile(join(tmp, 'b', 'hf_quant_config.json'), 'utf8'));
  });

  it('an unknown model_type is refused with the list of families', () => {
    expect(() => architectureFor('gpt2', 'config.json')).toThrow(/model_type "gpt2" is not supported; supported: llama, qwen2, qwen3, mistral, mixtral, qwen3_moe, llama4_text, llama4, deepseek_v3/);
    expect(() => architectureFor('constructor', 'config.json')).toThrow(/not supported/);
  });
});
