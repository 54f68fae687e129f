/**
 * EAGLE drafts (spec families.md §7.2): `rxquant quantize DRAFT --base TARGET --format fp8`. The draft
 * is opened as a model of its own (models/eagle.ts), calibrated by running the target's forward
 * pass up to the layers the draft reads and then the draft's first step, and exported through the
 * same operator chain as any model, laid out as ModelOpt's EAGLE exporter lays it out.
 */
import { lastValueFrom, tap } from 'rxjs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { readCheckpoint } from '../operators/readCheckpoint.js';
import { quantize } from '../operators/quantize.js';
import { pack } from '../operators/pack.js';
import { writeShards, type WriteEvent } from '../operators/writeShards.js';
import { CheckpointError } from './errors.js';
import { openModel, readConfigJson, type SourceModel } from './model.js';
import { openCheckpoint } from './safetensors/checkpoint.js';
import { reshaped } from './sources/views.js';
import type { TensorSource } from './sources/source.js';
import { checkEagleTensors, eagleExportConfig, eagleFamily, eagleOuterLayout, isEagleDraft, loadEagleDraft, parseEagle, type EagleConfig } from './models/eagle.js';
import { StatsCollector } from './calibration/collector.js';
import { hiddenStore, layerOverSamples, type HiddenStore } from './calibration/hidden-store.js';
import { defaultGemm, type GemmEngine } from './forward/gemm.js';
import { embed, loadFinalNorm, weightSource } from './forward/weights.js';
import { ropeTables } from './forward/rope.js';
import { rmsnorm } from './forward/ops.js';
import { createPlan, type ExportOptions, type ExportPlan } from './export/plan.js';
import { formatSpec, type FormatName } from './formats/registry.js';
import type { Stats } from './export/stats.js';

/** Whether the folder's config.json describes an EAGLE draft. */
export async function isEagleDraftDir(dir: string): Promise<boolean> {
  return isEagleDraft((await readConfigJson(dir)).plain);
}

export interface EagleDraft {
  model: SourceModel;
  eagle: EagleConfig;
}

/**
 * Opens an EAGLE draft for `target` (which the draft's close() then closes too): config.json and
 * every tensor validated against the draft format and the target. The EAGLE authors' `midlayer.*`
 * is read as `layers.0.*`; `t2d` (a mask ModelOpt's exporter does not keep) is left out; without a
 * `lm_head`, the target's is exported in its place, as ModelOpt does.
 */
export async function openEagleDraft(dir: string, target: SourceModel): Promise<EagleDraft> {
  const { raw, plain } = await readConfigJson(dir);
  const cfgPath = join(dir, 'config.json');
  if (!isEagleDraft(plain)) throw new CheckpointError(cfgPath, 'not an EAGLE draft (no "eagle_config" block, no Eagle architecture); --base is for EAGLE drafts only');
  const eagle = parseEagle(plain, cfgPath, target.config);
  const ck = await openCheckpoint(dir);
  try {
    const notes: string[] = [];
    const tensors = new Map<string, TensorSource>();
    for (const [name, t] of ck.tensors) {
      if (name === 't2d') {
        notes.push('t2d (the target-to-draft vocabulary mask) is left out, as ModelOpt exports drafts');
        continue;
      }
      const renamed = name.startsWith('midlayer.') ? `layers.0.${name.slice('midlayer.'.length)}` : name;
      tensors.set(renamed, renamed === name ? t : reshaped(t, t.shape, renamed));
    }
    if (!tensors.has('lm_head.weight')) {
      const names = target.arch.names;
      const head = target.tensors.get(`${names.lmHead}.weight`) ?? target.tensors.get(`${names.embed}.weight`);
      if (!head || head.shape[0] !== eagle.draftVocab) {
        throw new CheckpointError(dir, `the draft has no lm_head.weight and its target's output head ${head ? `has ${head.shape[0]} rows, not draft_vocab_size ${eagle.draftVocab}` : 'is missing'}`);
      }
      tensors.set('lm_head.weight', reshaped(head, head.shape, 'lm_head.weight'));
      notes.push(`the draft has no lm_head: the target's (${head.name}) is exported as lm_head.weight, as ModelOpt does`);
    }
    checkEagleTensors(tensors, eagle, dir);
    const arch = eagleFamily(eagle);
    const layers = Array.from({ length: eagle.config.numLayers }, (_, i) => arch.layer(i, eagle.config));
    const outer = eagleOuterLayout(eagle);
    const model: SourceModel = {
      dir,
      configDir: dir,
      notes,
      configRaw: raw,
      config: eagle.config,
      arch,
      checkpoint: ck,
      tensors,
      fp8BlockSource: false,
      layers,
      ...(outer ? { outerLinears: outer } : {}),
      eagleDraft: { exportConfig: (quant) => eagleExportConfig(raw, target.configRaw, eagle, quant) },
      close: async () => {
        await ck.close();
        await target.close();
      },
    };
    return { model, eagle };
  } catch (e) {
    await ck.close();
    throw e;
  }
}

/** Opens the target model, then the draft with it; the target is closed again if the draft is refused. */
export async function openEagleWithTarget(draftDir: string, targetDir: string): Promise<EagleDraft & { target: SourceModel }> {
  const target = await openModel(targetDir);
  try {
    return { ...(await openEagleDraft(draftDir, target)), target };
  } catch (e) {
    await target.close();
    throw e;
  }
}

export interface EagleCalibrateOptions {
  gemm?: GemmEngine;
  /** Hidden states beyond this many bytes go to temporary files (default 2 GiB each). */
  memoryBudgetBytes?: number;
  spillDir?: string;
  /** After each target layer (`layer`), and once for the draft (`layer: -1`). */
  onProgress?: (p: { layer: number; seconds: number }) => void;
}

/**
 * The draft's activation statistics (`<module>.input_amax` etc., K/V amax of its layers) over the
 * calibration samples: the target runs layer by layer up to the last layer the draft reads (every
 * layer and the final norm for a draft without auxiliary states), keeping those layers' outputs;
 * then the draft's first step runs on each sample (models/eagle.ts says how).
 */
export async function calibrateEagle(draft: EagleDraft, target: SourceModel, samples: number[][], o: EagleCalibrateOptions = {}): Promise<Stats> {
  const { eagle } = draft;
  const gemm = o.gemm ?? (await defaultGemm(cpus().length));
  const tsrc = weightSource(target);
  const tcfg = target.config;
  const H = tcfg.hiddenSize, nA = eagle.auxLayerIds.length;
  const lengths = samples.map((s) => s.length);
  const maxT = Math.max(...lengths);
  const stores: HiddenStore[] = [];
  try {
    const hidden = await hiddenStore(lengths, H, o.memoryBudgetBytes, o.spillDir);
    stores.push(hidden);
    // the aux layers' outputs side by side per token: [T, nA*H], fc's input
    const aux = eagle.useAux ? await hiddenStore(lengths, nA * H, o.memoryBudgetBytes, o.spillDir) : undefined;
    if (aux) stores.push(aux);
    for (let i = 0; i < samples.length; i++) await hidden.set(i, await embed(tsrc, samples[i]!, H, target.arch.names));
    const last = eagle.useAux ? Math.max(...eagle.auxLayerIds) : tcfg.numLayers - 1;
    const { cos, sin } = ropeTables(tcfg.rope, tcfg.headDim, maxT);
    for (let l = 0; l <= last; l++) {
      const t0 = Date.now();
      await layerOverSamples(target.arch.forward, tsrc, target.layers[l]!, tcfg, gemm, hidden, lengths, cos, sin, {});
      const slot = eagle.auxLayerIds.indexOf(l);
      if (aux && slot >= 0) {
        for (let i = 0; i < samples.length; i++) {
          const h = await hidden.get(i), a = await aux.get(i);
          for (let t = 0; t < lengths[i]!; t++) a.set(h.subarray(t * H, (t + 1) * H), t * nA * H + slot * H);
          await aux.set(i, a);
        }
      }
      o.onProgress?.({ layer: l, seconds: (Date.now() - t0) / 1000 });
    }
    if (!eagle.useAux) {
      // EAGLE-1 style: the target's output hidden state, after its final norm
      const norm = await loadFinalNorm(tsrc, target.arch.names);
      for (let i = 0; i < samples.length; i++) await hidden.set(i, rmsnorm(await hidden.get(i), lengths[i]!, H, norm, tcfg.rmsNormEps));
    }
    const t0 = Date.now();
    const collector = new StatsCollector();
    const hooks = {
      linearInputs: (modules: readonly string[], x: Float32Array, T: number, K: number) => collector.observeShared(modules, x, T, K),
      keysValues: (attention: string, k: Float32Array, v: Float32Array) => collector.observeKV(attention, k, v),
    };
    const dc = eagle.config;
    const rope = ropeTables(dc.rope, dc.headDim, maxT);
    const prepared = await loadEagleDraft(weightSource(draft.model), eagle, gemm);
    try {
      for (let i = 0; i < samples.length; i++) {
        const ids = samples[i]!, T = ids.length;
        // the token after each position (the sequence rolled left by one, the first token last)
        const e = await embed(tsrc, [...ids.slice(1), ids[0]!], H, target.arch.names);
        const x = aux ? await prepared.fc(await aux.get(i), T, hooks) : await hidden.get(i);
        await prepared.run(e, x, T, rope.cos, rope.sin, hooks);
      }
    } finally {
      await prepared.release();
    }
    gemm.dropSpareBuffers?.();
    o.onProgress?.({ layer: -1, seconds: (Date.now() - t0) / 1000 });
    return collector.result();
  } finally {
    for (const s of stores) await s.close();
  }
}

export interface EagleExportOptions extends ExportOptions {
  /** The EAGLE draft's folder. */
  draft: string;
  /** The target model's folder (what the draft drafts for). */
  base: string;
  format: FormatName;
  out: string;
  /** Calibration samples (token ids of the target's tokenizer). */
  calibration?: number[][];
  overwrite?: boolean;
  directIO?: boolean;
  workers?: number;
  gemm?: GemmEngine;
  onCalibrate?: (p: { layer: number; seconds: number }) => void;
  onPlan?: (plan: ExportPlan) => void;
  onEvent?: (e: WriteEvent) => void;
  /** Told the notes of opening the draft (a renamed layer, the target's lm_head used). */
  onNote?: (note: string) => void;
}

/**
 * Quantizes an EAGLE draft for its target and writes it as ModelOpt's EAGLE exporter does: one
 * model.safetensors (no metadata, no index), config.json from its template with the nested
 * `quantization_config`, hf_quant_config.json; exclude_modules in the draft's own names.
 */
export async function exportEagleDraft(o: EagleExportOptions): Promise<Extract<WriteEvent, { type: 'done' }>> {
  const draft = await openEagleWithTarget(o.draft, o.base);
  const target = draft.target;
  let stats = o.stats;
  try {
    for (const n of draft.model.notes) o.onNote?.(n);
    // the plan (formats, shapes) is checked before the target runs
    createPlan(draft.model, formatSpec(o.format), { kvCache: o.kvCache, exclude: o.exclude, deferStatsCheck: true });
    if (o.calibration) {
      const measured = await calibrateEagle(draft, target, o.calibration, { gemm: o.gemm, onProgress: o.onCalibrate });
      stats = new Map([...(stats ?? []), ...measured]);
    }
  } catch (e) {
    await draft.model.close();
    throw e;
  }
  const last = await lastValueFrom(
    readCheckpoint(draft.model).pipe(
      quantize(o.format, { stats, kvCache: o.kvCache, exclude: o.exclude, workers: o.workers, onPlan: o.onPlan }),
      pack(),
      writeShards(o.out, { overwrite: o.overwrite, directIO: o.directIO }),
      tap((e) => o.onEvent?.(e)),
    ),
  );
  if (last.type !== 'done') throw new Error('export ended without completing');
  return last;
}
