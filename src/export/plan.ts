/**
 * The export plan: decided from config.json and the shard headers alone, before any weight is read.
 * Which linears are quantized (and why the others are not), every output tensor's name, dtype and
 * shape (so shards can be laid out up front), and the two quantization configs.
 */
import { QuantizationError } from '../errors.js';
import type { SourceModel } from '../model.js';
import type { DType, FloatDType } from '../safetensors/dtypes.js';
import type { TensorSpec } from '../safetensors/writer.js';
import type { FusedGroup } from '../models/base.js';
import { buildHfQuantConfig, toQuantizationConfig, type HfQuantConfig } from './quant-config.js';
import { matchesPattern } from './exclude.js';
import type { FormatSpec, KvCacheMode } from './formats.js';
import { fusedPartName, type LinearShape } from '../formats/format.js';
import type { PyValue } from '../util/pyjson.js';
import type { Stats } from './stats.js';

export interface LinearDecision {
  module: string;
  layer: number;
  /** out_features, in_features */
  N: number;
  K: number;
  dtype: FloatDType;
  quantized: boolean;
  /** Why it stays unquantized. */
  reason?: string;
  group?: FusedGroup;
  /** A fused 3-D expert parameter [E, A, B] (A = in features), quantized whole (Llama 4); N = E*A, K = B. */
  fused?: { E: number; A: number; B: number };
}

export interface ExportOptions {
  kvCache?: KvCacheMode;
  /** Extra module patterns (fnmatch, `*` matches dots) to leave unquantized. */
  exclude?: string[];
  stats?: Stats;
  /** Statistics arrive per unit from `calibrate`: check them layer by layer instead of up front. */
  deferStatsCheck?: boolean;
}

export interface ExportPlan {
  format: FormatSpec;
  kvCache: KvCacheMode;
  model: SourceModel;
  decisions: Map<string, LinearDecision>;
  /** Every output tensor, in state-dict order (embeddings, layers, the rest). */
  outputs: TensorSpec[];
  hfQuantConfig: HfQuantConfig;
  quantizationConfig: Record<string, PyValue>;
  warnings: string[];
}

/** Output tensors of one quantized linear, in the order ModelOpt's state dict has them. */
export function quantizedTensorSpecs(d: LinearDecision, format: FormatSpec, hasPreQuantScale: boolean): TensorSpec[] {
  const { module: m, N, K } = d;
  const scalar = (name: string): TensorSpec => ({ name: `${m}.${name}`, dtype: 'F32', shape: [] });
  if (d.fused) {
    const { E, A, B } = d.fused;
    return [...format.fused!.streamedTensors(m, E, A, B), ...format.scalars.map((s): TensorSpec => ({ name: fusedPartName(m, s), dtype: 'F32', shape: [] }))];
  }
  const out: TensorSpec[] = [...format.streamedTensors(m, N, K), ...format.scalars.map(scalar)];
  if (hasPreQuantScale) out.push({ name: `${m}.pre_quant_scale`, dtype: d.dtype as DType, shape: [K] });
  return out;
}

/**
 * Which quantized linears keep a `pre_quant_scale` tensor after folding (spec §8.3): members of a fused
 * group fold into their norm; NVFP4_AWQ also folds o_proj/down_proj into v_proj/up_proj for Llama/Qwen3.
 */
export function keepsPreQuantScale(plan: Pick<ExportPlan, 'format' | 'decisions' | 'model'>, module: string): boolean {
  if (!plan.format.awq) return false;
  const d = plan.decisions.get(module)!;
  if (!d.quantized) return false;
  if (d.group && d.group.members.length > 1 && d.group.norm) return false;
  if (plan.format.foldsIntoPreviousLinear) {
    const layout = plan.model.layers[d.layer]!;
    if (layout.linearFolds.some((f) => f.from === module && plan.decisions.get(f.into)?.quantized)) return false;
  }
  return true;
}

/** The reason of a linear the family's recipe keeps unquantized (no warning: it is the recipe). */
const KEPT_BY_RECIPE = "kept in 16 bits by the family's recipe";

/** Why a format cannot quantize a linear of this [N, K] shape, or undefined when it can. */
export function shapeReason(format: Pick<FormatSpec, 'kMultiple' | 'evenRows'>, N: number, K: number): string | undefined {
  if (K % format.kMultiple !== 0) return `in_features ${K} is not a multiple of ${format.kMultiple}`;
  if (format.evenRows && N % 2 !== 0) return `out_features ${N} is odd (int4 packs pairs of rows)`;
  return undefined;
}

export function createPlan(model: SourceModel, format: FormatSpec, options: ExportOptions = {}): ExportPlan {
  if (model.arch.formats && !model.arch.formats.includes(format.name)) {
    throw new QuantizationError(`format ${format.name} is not available for ${model.arch.family}: its recipe defines ${model.arch.formats.join(', ')}`);
  }
  if (format.awq && model.arch.awqUnsupported) {
    throw new QuantizationError(`format ${format.name} is not available for ${model.arch.family} yet: ${model.arch.awqUnsupported}; use fp8, fp8_pb_wo or nvfp4`);
  }
  const kvCache = options.kvCache ?? 'fp8_cast';
  if (kvCache === 'fp8' && model.arch.kvScalesUnsupported) {
    throw new QuantizationError(`--kv-cache fp8 is not available for ${model.arch.family}: ${model.arch.kvScalesUnsupported}; use fp8_cast (the default) or none`);
  }
  if (format.awq && model.medusa) {
    throw new QuantizationError(`format ${format.name} is not available for a model with Medusa heads yet (ModelOpt's Medusa recipe is FP8); use fp8, fp8_pb_wo or nvfp4`);
  }
  const warnings: string[] = [];
  const decisions = new Map<string, LinearDecision>();
  // the decoder layers, then the linears outside them (Medusa heads, an EAGLE draft's fc: layout index -1), quantized by the same rules
  for (const layout of [...model.layers, ...(model.outerLinears ? [model.outerLinears] : [])]) {
    for (const m of layout.linears) {
      const t = model.tensors.get(`${m}.weight`)!;
      const [N, K] = t.shape as [number, number];
      const group = layout.groups.find((g) => g.members.includes(m));
      let reason: string | undefined;
      if (options.exclude?.some((p) => matchesPattern(m, p))) reason = 'excluded by --exclude';
      else if (layout.keep?.includes(m)) reason = KEPT_BY_RECIPE;
      else reason = shapeReason(format, N, K);
      decisions.set(m, { module: m, layer: layout.index, N, K, dtype: t.dtype as FloatDType, quantized: reason === undefined, reason, group });
    }
    for (const m of layout.fusedExperts ?? []) {
      if (!format.fused) {
        throw new QuantizationError(`format ${format.name} does not define ${model.arch.family}'s fused expert tensors (ModelOpt exports them in fp8 and nvfp4); use one of those`);
      }
      const t = model.tensors.get(m)!;
      const [E, A, B] = t.shape as [number, number, number];
      let reason: string | undefined;
      if (options.exclude?.some((p) => matchesPattern(m, p))) reason = 'excluded by --exclude';
      else if (A % format.kMultiple !== 0) reason = `in_features ${A} is not a multiple of ${format.kMultiple}`;
      decisions.set(m, { module: m, layer: layout.index, N: E * A, K: B, dtype: t.dtype as FloatDType, quantized: reason === undefined, reason, fused: { E, A, B } });
    }
    // fused groups, and the experts of an MoE layer, are quantized all or none (engines §6.11:
    // one GEMM, one format); repeated until stable, as the two kinds of group overlap
    const allOrNone = [...layout.groups.map((g) => g.members), ...(layout.sharedWeightScale ?? []), ...(layout.sharedInputScale ?? [])];
    for (let changed = true; changed; ) {
      changed = false;
      for (const members of allOrNone) {
        const bad = members.map((m) => decisions.get(m)!).find((d) => !d.quantized);
        if (!bad) continue;
        for (const m of members) {
          const d = decisions.get(m)!;
          if (d.quantized) {
            d.quantized = false;
            d.reason = `${layout.groups.some((g) => g.members.includes(m) && g.members.includes(bad.module)) ? 'fused with' : 'shares its scales with'} ${bad.module}, which stays unquantized`;
            changed = true;
          }
        }
      }
    }
  }
  const quantized = [...decisions.values()].filter((d) => d.quantized).map((d) => d.module);
  const skipped = [...decisions.values()].filter((d) => !d.quantized);
  if (quantized.length === 0) {
    const why = skipped[0] ? ` (e.g. ${skipped[0].module}: ${skipped[0].reason})` : '';
    throw new QuantizationError(`no linear layer of ${model.dir} can be quantized to ${format.name}${why}`);
  }
  for (const d of skipped) {
    if (d.reason !== 'excluded by --exclude' && d.reason !== KEPT_BY_RECIPE) warnings.push(`${d.module} kept in ${d.dtype}: ${d.reason}`);
  }
  // engines whose loaders refuse these shapes: said before any work (engines.md §6 point 12)
  const byEngine = new Map<string, string[]>();
  for (const b of format.loadBlockers(quantizedShapes(decisions))) byEngine.set(b.engine, [...(byEngine.get(b.engine) ?? []), b.reason]);
  for (const [engine, reasons] of byEngine) {
    warnings.push(`${engine} will not load this export: ${reasons[0]}${reasons.length > 1 ? ` (and ${reasons.length - 1} more)` : ''}`);
  }
  if (!options.deferStatsCheck) checkStats(model, format, kvCache, quantized, options.stats);

  const untouched = [...model.tensors.keys()].filter((n) => model.arch.untouchedPrefixes?.some((p) => n.startsWith(p))).map((n) => n.replace(/\.(weight|bias)$/, ''));
  const unquantized = [...model.arch.alwaysExcluded, ...model.layers.flatMap((l) => l.excluded ?? []), ...untouched, ...skipped.map((d) => d.module)];
  const hfQuantConfig = buildHfQuantConfig(format, kvCache, unquantized, quantized);
  // layers after the decoder layers (DeepSeek's MTP), copied unquantized: one pattern each, after the
  // sorted list (families.md §6.5); `.*` where a quantized layer's index starts with the same digits
  for (const L of model.arch.extraLayers?.(model.config) ?? []) {
    const p = `model.layers.${L}`;
    if (![...model.tensors.keys()].some((n) => n.startsWith(`${p}.`))) continue;
    hfQuantConfig.quantization.exclude_modules.push(quantized.some((m) => m.startsWith(p)) ? `${p}.*` : `${p}*`);
  }
  const plan: ExportPlan = {
    format,
    kvCache,
    model,
    decisions,
    outputs: [],
    hfQuantConfig,
    quantizationConfig: toQuantizationConfig(hfQuantConfig),
    warnings,
  };
  plan.outputs = planOutputs(plan);
  return plan;
}

/** The quantized linears as engine loaders see them: [N, K] and fused-group membership. */
export function quantizedShapes(decisions: Map<string, LinearDecision>): LinearShape[] {
  return [...decisions.values()].filter((d) => d.quantized).map((d) => ({ module: d.module, N: d.N, K: d.K, fused: (d.group?.members.length ?? 0) > 1 }));
}

function checkStats(model: SourceModel, format: FormatSpec, kv: KvCacheMode, quantized: string[], stats: Stats | undefined): void {
  const needed: string[] = [];
  if (format.inputScaleDivisor !== undefined) needed.push(...quantized.map((m) => `${m}.input_amax`));
  if (kv === 'fp8') for (const l of model.layers) needed.push(`${l.attention}.k_amax`, `${l.attention}.v_amax`);
  if (needed.length === 0) return;
  const missing = needed.filter((k) => !stats?.has(k));
  if (missing.length === 0) return;
  const what = kv === 'fp8' && missing[0]!.match(/\.[kv]_amax$/) ? '--kv-cache fp8 needs post-RoPE K/V amax statistics' : `format ${format.name} needs activation statistics`;
  throw new QuantizationError(
    stats
      ? `${what}: "${missing[0]}" (and ${missing.length - 1} more) not found in the statistics`
      : `${what}; pass --stats <file.safetensors> or --calib <text> to calibrate`,
  );
}

/** Output tensors: embeddings first, then each layer (sorted by name), then the rest, as a state dict orders them. */
function planOutputs(plan: ExportPlan): TensorSpec[] {
  const { model, format, decisions } = plan;
  const out: TensorSpec[] = [];
  const byLayer: TensorSpec[][] = model.layers.map(() => []);
  const head: TensorSpec[] = [];
  const tail: TensorSpec[] = [];
  const quantizedWeights = new Map<string, LinearDecision>();
  for (const d of decisions.values()) if (d.quantized) quantizedWeights.set(d.fused ? d.module : `${d.module}.weight`, d);
  const layerOf = new Map(model.layers.map((l) => [`${l.prefix}.`, l.index]));
  const layerPrefix = /^((?:.*\.)?layers\.\d+\.)/; // model.layers.3. (an EAGLE draft: layers.0.)
  for (const t of model.tensors.values()) {
    const lm = layerPrefix.exec(t.name);
    const li = lm ? layerOf.get(lm[1]!) : undefined;
    const bucket = li !== undefined ? byLayer[li]! : t.name.startsWith(`${model.arch.names.embed}.`) ? head : tail;
    const d = quantizedWeights.get(t.name);
    if (d) bucket.push(...quantizedTensorSpecs(d, format, keepsPreQuantScale(plan, d.module)));
    else bucket.push({ name: t.name, dtype: t.dtype, shape: t.shape });
  }
  if (plan.kvCache === 'fp8') {
    for (const l of model.layers) {
      byLayer[l.index]!.push(
        { name: `${l.attention}.k_proj.k_scale`, dtype: 'F32', shape: [] },
        { name: `${l.attention}.v_proj.v_scale`, dtype: 'F32', shape: [] },
      );
    }
  }
  const byName = (a: TensorSpec, b: TensorSpec) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0);
  out.push(...head.sort(byName));
  for (const l of byLayer) out.push(...l.sort(byName));
  out.push(...tail.sort(byName));
  return out;
}
