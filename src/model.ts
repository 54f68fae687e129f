/** Opening a source model: config.json, architecture, shard headers, and a check that the layout is as expected. */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { CheckpointError } from './errors.js';
import { openCheckpoint, type Checkpoint } from './safetensors/checkpoint.js';
import { isFloatWeightDType } from './safetensors/dtypes.js';
import { architectureFor, type Architecture, type LayerLayout, type ModelConfig } from './models/index.js';
import { parsePreservingNumbers, type PyValue } from './util/pyjson.js';

export interface SourceModel {
  dir: string;
  /** config.json as parsed, with number literals preserved for rewriting. */
  configRaw: Record<string, PyValue>;
  config: ModelConfig;
  arch: Architecture;
  checkpoint: Checkpoint;
  layers: LayerLayout[];
  close(): Promise<void>;
}

export async function readConfigJson(dir: string): Promise<{ raw: Record<string, PyValue>; plain: Record<string, unknown> }> {
  const path = join(dir, 'config.json');
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch {
    throw new CheckpointError(path, 'missing: a Hugging Face checkpoint needs config.json');
  }
  let raw: PyValue;
  let plain: unknown;
  try {
    raw = parsePreservingNumbers(text);
    plain = JSON.parse(text.replace(/\bNaN\b|-?Infinity\b/g, 'null'));
  } catch (e) {
    throw new CheckpointError(path, `not valid JSON (${(e as Error).message})`);
  }
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) throw new CheckpointError(path, 'not a JSON object');
  return { raw: raw as Record<string, PyValue>, plain: plain as Record<string, unknown> };
}

/** Opens a model folder and validates that every linear rxquant will touch exists with the expected shape. */
export async function openModel(dir: string): Promise<SourceModel> {
  const { raw, plain } = await readConfigJson(dir);
  const cfgPath = join(dir, 'config.json');
  const arch = architectureFor(plain.model_type, cfgPath);
  const config = arch.parseConfig(plain, cfgPath);
  const checkpoint = await openCheckpoint(dir);
  try {
    const layers: LayerLayout[] = [];
    for (let i = 0; i < config.numLayers; i++) {
      const layout = arch.layer(i, config);
      for (const m of layout.linears) {
        const t = checkpoint.tensors.get(`${m}.weight`);
        if (!t) throw new CheckpointError(dir, `tensor "${m}.weight" is missing (config.json says ${config.numLayers} layers)`);
        if (!isFloatWeightDType(t.dtype)) throw new CheckpointError(dir, `tensor "${m}.weight" has dtype ${t.dtype}; expected BF16, F16 or F32 (already quantized?)`);
        const want = arch.linearShape(m, config);
        if (t.shape.length !== 2 || (want && (t.shape[0] !== want[0] || t.shape[1] !== want[1]))) {
          throw new CheckpointError(dir, `tensor "${m}.weight" has shape [${t.shape.join(', ')}], expected [${want?.join(', ')}] from config.json`);
        }
      }
      for (const m of layout.fusedExperts ?? []) {
        const t = checkpoint.tensors.get(m);
        if (!t) throw new CheckpointError(dir, `tensor "${m}" is missing (config.json says layer ${i} has experts)`);
        if (!isFloatWeightDType(t.dtype) || t.shape.length !== 3) throw new CheckpointError(dir, `tensor "${m}" is ${t.dtype} [${t.shape.join(', ')}]; expected BF16, F16 or F32 [experts, in, out]`);
      }
      layers.push(layout);
    }
    const extra = [...checkpoint.tensors.keys()].find((n) => {
      const m = /^model\.layers\.(\d+)\./.exec(n);
      return m && Number(m[1]) >= config.numLayers;
    });
    if (extra) throw new CheckpointError(dir, `tensor "${extra}" belongs to a layer beyond num_hidden_layers=${config.numLayers}`);
    return { dir, configRaw: raw, config, arch, checkpoint, layers, close: () => checkpoint.close() };
  } catch (e) {
    await checkpoint.close();
    throw e;
  }
}
