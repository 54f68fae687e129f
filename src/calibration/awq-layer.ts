/**
 * The AWQ search of one decoder layer, run by `calibrate` right after the layer's forward pass over
 * every calibration sample (its inputs kept in an AwqInputCache): for each linear the export format
 * can quantize, AWQ-lite (awq.ts) on that linear's own inputs, giving the statistics the export reads:
 *   `<module>.pre_quant_scale` [K]  1 / s_α* (ones for a linear that saw no tokens)
 *   `<module>.awq_alpha`            α* (a scalar; -1 when the linear saw no tokens)
 *   `<module>.awq_loss` [11]        the loss of each α, for inspection
 *   `<module>.awq_clip_ratio`       awq_clip/full on a per-tensor amax (NVFP4): the ratio chosen
 *   `<module>.awq_clip_ratios` [N, K/G]   awq_clip/full per block (INT4): the ratio of each (row, group)
 * The export then averages the scales of fused siblings and of experts and folds them as ModelOpt
 * does (spec §8.2-8.4); nothing here changes the hidden states passed to the next layer.
 */
import type { LayerLayout } from '../models/base.js';
import type { QuantFormat } from '../formats/format.js';
import { formatSpec, type FormatName } from '../formats/registry.js';
import type { GemmEngine } from '../forward/gemm.js';
import { loadLinear, type WeightSource } from '../forward/weights.js';
import type { Stats } from '../export/stats.js';
import { shapeReason } from '../export/plan.js';
import { isFloatWeightDType } from '../safetensors/dtypes.js';
import { firstNonFinite } from '../formats/common.js';
import { QuantizationError, UsageError } from '../errors.js';
import { AWQ_ALPHAS, AwqWorkspace, awqClipBlockSearch, awqClipGlobalSearch, awqInputMean, awqLiteSearch, DEFAULT_AWQ_CANDIDATE_BYTES } from './awq.js';
import { AwqInputCache, DEFAULT_INPUT_CACHE_BYTES } from './input-cache.js';

/** `--awq`: ModelOpt's awq_lite, awq_clip, awq_full, or no search (pre_quant_scale of ones: round-to-nearest). */
export type AwqAlgorithm = 'lite' | 'clip' | 'full' | 'none';
export const AWQ_ALGORITHMS: readonly AwqAlgorithm[] = ['lite', 'clip', 'full', 'none'];

export interface AwqSearchOptions {
  /** The export format, by record or name (an AWQ one: its fake quantization and group size drive the search). */
  format: QuantFormat | FormatName;
  algorithm: Exclude<AwqAlgorithm, 'none'>;
  /** Bytes of candidate weights prepared at once per linear (default 2 GiB). */
  candidateBytes?: number;
  /** Bytes of the layer's inputs kept in memory before the rest goes to a temporary file (default 2 GiB). */
  cacheBytes?: number;
  /** Folder for that file (default: the OS temporary folder). */
  spillDir?: string;
}

/** The cache for one layer: members of one fused group (q/k/v, gate/up) share their input. */
export function layerInputCache(layout: LayerLayout, o: AwqSearchOptions): AwqInputCache {
  const groupOf = new Map<string, number>();
  layout.groups.forEach((g, i) => g.members.forEach((m) => groupOf.set(m, i)));
  const same = (a: string, b: string) => groupOf.has(a) && groupOf.get(a) === groupOf.get(b);
  return new AwqInputCache(same, o.cacheBytes ?? DEFAULT_INPUT_CACHE_BYTES, o.spillDir);
}

/** The linears of a layer the search runs on: those whose shape the format can quantize, not kept in 16 bits. */
export function awqTargets(layout: LayerLayout, shapeOf: (module: string) => readonly number[] | undefined, fmt: QuantFormat): { module: string; N: number; K: number }[] {
  const out: { module: string; N: number; K: number }[] = [];
  for (const m of layout.linears) {
    if (layout.keep?.includes(m)) continue;
    const s = shapeOf(m);
    if (!s || s.length !== 2) continue;
    const [N, K] = s as [number, number];
    if (shapeReason(fmt, N, K)) continue;
    out.push({ module: m, N, K });
  }
  return out;
}

/** The options' format record, checked to be an AWQ format the algorithm applies to. */
export function awqFormat(o: AwqSearchOptions): QuantFormat {
  const f = typeof o.format === 'string' ? formatSpec(o.format) : o.format;
  if (!f.awq || !f.fakeQuantizeInPlace) throw new UsageError(`the AWQ search applies to the AWQ formats, not ${f.name}`);
  if (o.algorithm !== 'lite' && !f.awqClip) {
    throw new UsageError(`--awq ${o.algorithm} changes nothing for ${f.name}: ModelOpt re-calibrates its weight by max after the search, undoing the clip; use --awq lite`);
  }
  return f;
}

/**
 * Whether AWQ-clip's result for a linear reaches the export: after AWQ-lite, fused siblings (q/k/v,
 * gate/up) and experts of one projection are re-smoothed to their mean scale and their weight amax
 * re-calibrated by max (spec §8.2), which discards the clip; so `full` clips only the others
 * (o_proj, down_proj), `clip` alone (scales of ones, nothing re-smoothed) every linear.
 */
function clipSurvives(layout: LayerLayout, module: string, algorithm: AwqSearchOptions['algorithm']): boolean {
  if (algorithm === 'clip') return true;
  const inGroup = layout.groups.some((g) => g.members.length > 1 && g.members.includes(module));
  const inExperts = (layout.expertLists ?? []).some((l) => l.length > 1 && l.includes(module));
  return !inGroup && !inExperts;
}

export async function awqSearchLayer(src: WeightSource, layout: LayerLayout, cache: AwqInputCache, o: AwqSearchOptions, gemm: GemmEngine, workspace = new AwqWorkspace()): Promise<Stats> {
  const stats: Stats = new Map();
  const fmt = awqFormat(o);
  const budget = o.candidateBytes ?? DEFAULT_AWQ_CANDIDATE_BYTES;
  for (const { module, N, K } of awqTargets(layout, (m) => src.tensors.get(`${m}.weight`)?.shape, fmt)) {
    if (!cache.has(module)) {
      if (o.algorithm !== 'clip') stats.set(`${module}.pre_quant_scale`, new Float32Array(K).fill(1));
      continue;
    }
    const dtype = src.tensors.get(`${module}.weight`)!.dtype;
    if (!isFloatWeightDType(dtype)) throw new QuantizationError(`${module}.weight is ${dtype}: the AWQ search needs a 16- or 32-bit float weight`);
    const lin = { w: (await loadLinear(src, module)).w, N, K, dtype };
    // a NaN/Inf weight: no search (ModelOpt disables AWQ for such a module); the export then stops
    // on it with the tensor, row and column named
    if (firstNonFinite(lin.w) >= 0) continue;
    let s = new Float32Array(K).fill(1);
    if (o.algorithm !== 'clip') {
      const xMean = await awqInputMean(cache.batches(module), K);
      const r = await awqLiteSearch(lin, fmt, xMean, () => cache.batches(module), gemm, budget, workspace);
      stats.set(`${module}.pre_quant_scale`, r.preQuantScale);
      stats.set(`${module}.awq_alpha`, Float32Array.of(r.best < 0 ? -1 : AWQ_ALPHAS[r.best]!));
      stats.set(`${module}.awq_loss`, Float32Array.from(r.loss));
      if (r.best >= 0) s = r.preQuantScale.map((v) => Math.fround(1 / v));
    }
    if (o.algorithm === 'lite' || !clipSurvives(layout, module, o.algorithm)) continue;
    if (fmt.awqClip === 'global') {
      const c = await awqClipGlobalSearch(lin, fmt, s, () => cache.batches(module), gemm, budget, workspace);
      stats.set(`${module}.awq_clip_ratio`, Float32Array.of(c.ratio));
    } else {
      stats.set(`${module}.awq_clip_ratios`, await awqClipBlockSearch(lin, fmt, s, () => cache.batches(module), gemm));
    }
  }
  return stats;
}
