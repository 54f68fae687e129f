/** The non-weight files of an export: config.json, hf_quant_config.json, generation_config.json, tokenizer and the rest. */
import { readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { ExportPlan } from './plan.js';
import { parsePreservingNumbers, pyDumps, type PyValue } from '../util/pyjson.js';

/** Files ModelOpt's copy_custom_model_files never copies (it writes its own versions, or they are weights). */
const SKIP = new Set([
  'config.json', 'hf_quant_config.json', 'quant_config.json', 'quantization_config.json', 'quantize_config.json',
  'recipe.yaml', 'recipe.yml', 'generation_config.json', 'model.safetensors.index.json', 'pytorch_model.bin.index.json',
]);
const WEIGHT_EXT = /\.(safetensors|bin|pt|pth|ckpt|h5|msgpack|gguf|onnx|npz)$/i;

export interface SideFile {
  name: string;
  content: string | Uint8Array;
}

export async function exportSideFiles(plan: ExportPlan): Promise<SideFile[]> {
  const dir = plan.model.configDir; // a Megatron checkpoint's side files come from its --hf-config
  const files: SideFile[] = [];
  if (plan.model.eagleDraft) {
    // ModelOpt's EAGLE exporter: its config template with the nested hf_quant_config, and that file; nothing else
    const quant = plan.hfQuantConfig as unknown as PyValue;
    return [
      { name: 'config.json', content: pyDumps(plan.model.eagleDraft.exportConfig(quant), 4) },
      { name: 'hf_quant_config.json', content: pyDumps(quant, 4) },
    ];
  }
  const config: Record<string, PyValue> = { ...plan.model.configRaw };
  delete config.quantization_config;
  config.quantization_config = plan.quantizationConfig;
  files.push({ name: 'config.json', content: pyDumps(config, 4) });
  files.push({ name: 'hf_quant_config.json', content: pyDumps(plan.hfQuantConfig as unknown as PyValue, 4) });
  const gen = await generationConfig(dir);
  if (gen !== undefined) files.push({ name: 'generation_config.json', content: gen });
  for (const name of (await readdir(dir)).sort()) {
    if (SKIP.has(name) || WEIGHT_EXT.test(name) || name.startsWith('.')) continue;
    const p = join(dir, name);
    if (!(await stat(p)).isFile()) continue;
    files.push({ name, content: await readFile(p) });
  }
  return files;
}

/**
 * generation_config.json as save_pretrained writes it (indent 2, sorted keys, trailing newline),
 * with ModelOpt's fix: do_sample becomes true when top_k / top_p are set (spec §2).
 */
async function generationConfig(dir: string): Promise<string | undefined> {
  let text: string;
  try {
    text = await readFile(join(dir, 'generation_config.json'), 'utf8');
  } catch {
    return undefined;
  }
  const g = parsePreservingNumbers(text) as Record<string, PyValue>;
  if ((g.top_k != null || g.top_p != null) && g.do_sample === false) g.do_sample = true;
  const sorted: Record<string, PyValue> = {};
  for (const k of Object.keys(g).sort()) sorted[k] = g[k]!;
  return pyDumps(sorted, 2) + '\n';
}
