/** Opening a source model: config.json, architecture, shard headers, and a check that the layout is as expected. */
import { checkMedusaTensors, medusaLayout, parseMedusa, type MedusaConfig } from './models/medusa.js';
import { isEagleDraft } from './models/eagle.js';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { CheckpointError } from './errors.js';
import { openCheckpoint, type Checkpoint } from './safetensors/checkpoint.js';
import { isFloatWeightDType } from './safetensors/dtypes.js';
import { architectureFor, FAMILIES, type Architecture, type LayerLayout, type ModelConfig } from './models/index.js';
import { parsePreservingNumbers, type PyValue } from './util/pyjson.js';
import type { TensorSource } from './sources/source.js';
import { fp8BlockDequant } from './sources/views.js';
import { openDcp, resolveTorchDist } from './sources/dcp.js';
import { megatronToHf } from './models/megatron.js';

export interface SourceModel {
  /** The checkpoint folder (for a Megatron checkpoint, its torch_dist folder). */
  dir: string;
  /** The folder of config.json and the side files (tokenizer, generation_config): `dir`, or a Megatron checkpoint's --hf-config. */
  configDir: string;
  /** What reading the source did that the user should know (a Megatron vocabulary trimmed). */
  notes: string[];
  /** config.json as parsed, with number literals preserved for rewriting. */
  configRaw: Record<string, PyValue>;
  config: ModelConfig;
  arch: Architecture;
  /** The source as stored (a safetensors checkpoint, or a Megatron torch_dist one read as HF tensors). */
  checkpoint: Pick<Checkpoint, 'dir' | 'close'> & { tensors: Map<string, TensorSource> };
  /**
   * Every tensor as rxquant reads it: the checkpoint's own, except that an FP8-block source's
   * weights are BF16 views dequantized with their `weight_scale_inv` (which are left out).
   */
  tensors: Map<string, TensorSource>;
  /** The source was stored in FP8 with 128x128 block scales (DeepSeek's published layout). */
  fp8BlockSource: boolean;
  layers: LayerLayout[];
  /**
   * Medusa heads stored with the base model (config.json's `medusa` block, families.md §7.1): their
   * settings and their linears as one layout (index -1), quantized and calibrated with the base.
   */
  medusa?: { config: MedusaConfig; layout: LayerLayout };
  /**
   * Linears outside the decoder layers that are quantized, as one layout (index -1) handled with the
   * rest unit: the Medusa heads, an EAGLE draft's `fc`.
   */
  outerLinears?: LayerLayout;
  /**
   * The model is an EAGLE draft (models/eagle.ts), exported as ModelOpt exports one: a single
   * model.safetensors without metadata, this config.json (given the nested hf_quant_config) and
   * hf_quant_config.json, no other side files.
   */
  eagleDraft?: { exportConfig(quant: PyValue): Record<string, PyValue> };
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

/**
 * The tensors of a checkpoint as rxquant reads them. An FP8-block source (config.json's
 * quantization_config `{"quant_method": "fp8", "weight_block_size": [128, 128]}`, DeepSeek V3/R1's
 * published layout) has each F8_E4M3 weight replaced by its BF16 dequantization, a view that reads
 * `<name>_scale_inv` too, wherever it is stored (families.md §6.2); the scales are left out.
 */
function sourceTensors(ck: Checkpoint, plain: Record<string, unknown>, cfgPath: string): { tensors: Map<string, TensorSource>; fp8BlockSource: boolean } {
  const qc = plain.quantization_config as { quant_method?: unknown; weight_block_size?: unknown; fmt?: unknown } | undefined;
  if (!qc || qc.quant_method !== 'fp8') return { tensors: new Map(ck.tensors), fp8BlockSource: false };
  const block = qc.weight_block_size;
  if (!Array.isArray(block) || block[0] !== 128 || block[1] !== 128) {
    throw new CheckpointError(cfgPath, `quantization_config: an FP8 source with weight_block_size ${JSON.stringify(block)} is not supported (DeepSeek's [128, 128] is)`);
  }
  const tensors = new Map<string, TensorSource>();
  for (const [name, t] of ck.tensors) {
    if (name.endsWith('_scale_inv')) {
      if (!ck.tensors.has(name.slice(0, -'_scale_inv'.length))) throw new CheckpointError(ck.dir, `tensor "${name}" scales no tensor of this checkpoint`);
      continue;
    }
    if (t.dtype !== 'F8_E4M3') {
      tensors.set(name, t);
      continue;
    }
    const scale = ck.tensors.get(`${name}_scale_inv`);
    if (!scale) throw new CheckpointError(ck.dir, `tensor "${name}" is F8_E4M3 but "${name}_scale_inv" is in no shard of this checkpoint`);
    tensors.set(name, fp8BlockDequant(t, scale, name));
  }
  return { tensors, fp8BlockSource: true };
}

export interface OpenModelOptions {
  /**
   * `dir` is a Megatron-Core torch_dist checkpoint (a save folder, an iter_* folder or a NeMo 2
   * folder); this HF model folder gives config.json and the side files, as ModelOpt's Megatron
   * export requires (spec megatron.md §9). Its tensors are read as the HF ones (models/megatron.ts).
   */
  hfConfig?: string;
}

/** Opens a model folder and validates that every linear rxquant will touch exists with the expected shape. */
export async function openModel(dir: string, options: OpenModelOptions = {}): Promise<SourceModel> {
  const configDir = options.hfConfig ?? dir;
  const { raw, plain } = await readConfigJson(configDir);
  const cfgPath = join(configDir, 'config.json');
  if (isEagleDraft(plain)) throw new CheckpointError(cfgPath, 'an EAGLE draft: it is quantized with its target model, rxquant quantize DRAFT --base TARGET --format fp8');
  const arch = architectureFor(plain.model_type, cfgPath);
  const config = arch.parseConfig(plain, cfgPath);
  const notes: string[] = [];
  let checkpoint: SourceModel['checkpoint'];
  if (options.hfConfig) {
    if (!arch.readsMegatronGpt) {
      const readable = Object.values(FAMILIES).filter((f) => f.readsMegatronGpt).map((f) => f.modelType);
      throw new CheckpointError(cfgPath, `model_type "${arch.modelType}": Megatron checkpoints are read for ${readable.join(', ')}`);
    }
    const dcp = await openDcp(await resolveTorchDist(dir));
    try {
      const m = megatronToHf(dcp, config, cfgPath);
      notes.push(...m.notes);
      checkpoint = { dir: dcp.dir, tensors: m.tensors, close: () => dcp.close() };
    } catch (e) {
      await dcp.close();
      throw e;
    }
  } else checkpoint = await openCheckpoint(dir);
  try {
    const { tensors, fp8BlockSource } = options.hfConfig ? { tensors: checkpoint.tensors, fp8BlockSource: false } : sourceTensors(checkpoint as Checkpoint, plain, cfgPath);
    const layers: LayerLayout[] = [];
    for (let i = 0; i < config.numLayers; i++) {
      const layout = arch.layer(i, config);
      for (const m of layout.linears) {
        const t = tensors.get(`${m}.weight`);
        if (!t) throw new CheckpointError(dir, `tensor "${m}.weight" is missing (config.json says ${config.numLayers} layers)`);
        if (!isFloatWeightDType(t.dtype)) throw new CheckpointError(dir, `tensor "${m}.weight" has dtype ${t.dtype}; expected BF16, F16 or F32 (already quantized?)`);
        const want = arch.linearShape(m, config);
        if (t.shape.length !== 2 || (want && (t.shape[0] !== want[0] || t.shape[1] !== want[1]))) {
          throw new CheckpointError(dir, `tensor "${m}.weight" has shape [${t.shape.join(', ')}], expected [${want?.join(', ')}] from config.json`);
        }
      }
      for (const m of layout.fusedExperts ?? []) {
        const t = tensors.get(m);
        if (!t) throw new CheckpointError(dir, `tensor "${m}" is missing (config.json says layer ${i} has experts)`);
        if (!isFloatWeightDType(t.dtype) || t.shape.length !== 3) throw new CheckpointError(dir, `tensor "${m}" is ${t.dtype} [${t.shape.join(', ')}]; expected BF16, F16 or F32 [experts, in, out]`);
      }
      layers.push(layout);
    }
    const extraLayers = new Set(arch.extraLayers?.(config) ?? []);
    const extra = [...tensors.keys()].find((n) => {
      const m = /^model\.layers\.(\d+)\./.exec(n);
      return m && Number(m[1]) >= config.numLayers && !extraLayers.has(Number(m[1]));
    });
    if (extra) throw new CheckpointError(dir, `tensor "${extra}" belongs to a layer beyond num_hidden_layers=${config.numLayers}`);
    const medusaConfig = parseMedusa(plain, cfgPath);
    let medusa: SourceModel['medusa'];
    if (medusaConfig) {
      const vocab = tensors.get(`${arch.names.embed}.weight`)?.shape[0] ?? config.vocabSize;
      checkMedusaTensors(tensors, medusaConfig, config.hiddenSize, vocab, dir);
      medusa = { config: medusaConfig, layout: medusaLayout(medusaConfig) };
    } else {
      const stray = [...tensors.keys()].find((n) => n.startsWith('medusa_heads.'));
      if (stray) throw new CheckpointError(dir, `tensor "${stray}" is a Medusa head, but config.json has no "medusa" block ({"num_medusa_heads": N, "num_medusa_layers": L})`);
    }
    return { dir, configDir, notes, configRaw: raw, config, arch, checkpoint, tensors, fp8BlockSource, layers, ...(medusa ? { medusa, outerLinears: medusa.layout } : {}), close: () => checkpoint.close() };
  } catch (e) {
    await checkpoint.close();
    throw e;
  }
}
