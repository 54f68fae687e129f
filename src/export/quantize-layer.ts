/**
 * Quantizes one decoder layer (in parts, see LayerParts), following ModelOpt's export order (spec §1 step 3-5):
 *   1. AWQ formats: smoothing by each pre_quant_scale, the o_proj/down_proj scales folded into
 *      v_proj/up_proj rows (NVFP4_AWQ, Llama/Qwen3), fused siblings re-smoothed to their mean scale,
 *      which is folded into the norm that feeds them (§8.2-8.3). These are recorded as element-wise
 *      edits applied to each chunk as it is read, never to a whole tensor in memory;
 *   2. a scan pass over the weights (in row chunks, in worker threads) for the per-tensor amax where
 *      the format has a per-tensor scale, unified across fused siblings (all but per-tensor FP8);
 *   3. the codes, streamed: `QuantizedLinear.chunks()` reads, edits and quantizes a few row chunks
 *      ahead of its consumer.
 */
import { totalmem } from 'node:os';
import { span } from '../util/trace.js';
import { QuantizationError } from '../errors.js';
import { decodeToFloat32, encodeFromFloat32, roundToDType } from '../codecs/float.js';
import type { KernelPool, Slot } from '../kernels/pool.js';
import { chunkTask } from '../kernels/chunk-task.js';
import type { WeightOp } from '../kernels/weight-ops.js';
import type { FloatDType } from '../safetensors/dtypes.js';
import type { TensorSource } from '../sources/source.js';
import { expertSlice, fp8BlockParts, reshaped, rowRange, transposed } from '../sources/views.js';
import type { ChunkInput } from '../kernels/tasks.js';
import type { BandOf } from '../formats/format.js';
import type { ModelUnit, QuantizedChunk, QuantizedLinear, QuantizedUnit } from './units.js';
import { keepsPreQuantScale, type ExportPlan } from './plan.js';
import { scalarStat, type Stats } from './stats.js';
import type { FormatSpec } from './formats.js';

interface Work {
  module: string;
  tensor: TensorSource;
  N: number;
  K: number;
  dtype: FloatDType;
  ops: WeightOp[];
  /** Current pre_quant_scale (AWQ), undefined once folded away. */
  pqs?: Float32Array;
  inputAmax?: number;
  weightAmax?: number;
  /** AWQ-clip's per-tensor amax ratio (NVFP4), applied to the scanned amax. */
  clipRatio?: number;
  /** AWQ-clip's ratio per (row, group) [N, K/G] (INT4), when it reaches the export. */
  clip?: Float32Array;
  /** A fused 3-D expert parameter [E, A, B]: `tensor` is its [E*A, B] rows; `source` the 3-D tensor. */
  fused?: { E: number; A: number; B: number; source: TensorSource };
}

/** A chunk to quantize: rows [row0, row0 + rows) of `source`, each K wide (for fused experts, a transposed band). */
interface ChunkSpec {
  source: TensorSource;
  row0: number;
  rows: number;
  K: number;
  band?: BandOf;
}

/**
 * A unit's quantization, as the parts it is emitted in. A decoder layer whose quantized weights
 * exceed `partBytes` (by default half the machine's memory, see defaultPartBytes) is cut into parts
 * of at least that many source bytes, each a whole number of amax components (linears that share a
 * weight amax: fused siblings, an expert's gate and up): a part's scan pass needs only its own
 * weights, and its codes pass reads them back while they are still in the page cache. The first
 * part also carries the unit's other tensors and the KV-cache scales. A smaller layer, and the rest
 * unit, are one part.
 */
export interface LayerParts {
  count: number;
  /** The parts in order; each one's scan runs when it is pulled. */
  parts: AsyncGenerator<QuantizedUnit>;
}

export async function quantizeLayerParts(unit: ModelUnit, plan: ExportPlan, stats: Stats, pool: KernelPool, partBytes = defaultPartBytes()): Promise<LayerParts> {
  const replaced = new Map<string, Uint8Array>();
  const kvScales = new Map<string, number>();
  // the rest unit holds the linears outside the layers (Medusa heads, an EAGLE draft's fc): quantized as a layer is
  const layout = unit.kind === 'layer' ? plan.model.layers[unit.layer]! : plan.model.outerLinears;
  if (!layout) {
    const whole = async function* (): AsyncGenerator<QuantizedUnit> {
      yield { ...unit, plan, linears: [], replaced, kvScales };
    };
    return { count: 1, parts: whole() };
  }
  if (plan.kvCache === 'fp8' && unit.kind === 'layer') {
    for (const kv of ['k', 'v'] as const) {
      const a = scalarStat(stats, `${layout.attention}.${kv}_amax`);
      if (a === undefined) throw new QuantizationError(`--kv-cache fp8 needs "${layout.attention}.${kv}_amax" in the statistics`);
      kvScales.set(`${layout.attention}.${kv}_proj.${kv}_scale`, Math.fround(a / 448));
    }
  }
  const fmt = plan.format;
  const byName = new Map(unit.tensors.map((t) => [t.name, t]));
  const tensor = (name: string) => {
    const t = byName.get(name);
    if (!t) throw new QuantizationError(`layer ${unit.layer}: tensor "${name}" is not in this unit`);
    return t;
  };

  const work = new Map<string, Work>();
  for (const m of layout.linears) {
    const d = plan.decisions.get(m)!;
    if (!d.quantized) continue;
    const entry: Work = { module: m, tensor: tensor(`${m}.weight`), N: d.N, K: d.K, dtype: d.dtype, ops: [] };
    if (fmt.inputScaleDivisor !== undefined) {
      const a = scalarStat(stats, `${m}.input_amax`);
      if (a === undefined) throw new QuantizationError(`format ${fmt.name} needs "${m}.input_amax" in the activation statistics`);
      entry.inputAmax = a;
    }
    work.set(m, entry);
  }
  for (const m of layout.fusedExperts ?? []) {
    const d = plan.decisions.get(m)!;
    if (!d.quantized) continue;
    const source = tensor(m);
    const { E, A, B } = d.fused!;
    const entry: Work = { module: m, tensor: reshaped(source, [E * A, B]), N: E * A, K: B, dtype: d.dtype, ops: [], fused: { E, A, B, source } };
    if (fmt.inputScaleDivisor !== undefined) {
      const a = scalarStat(stats, `${m}.input_amax`);
      if (a === undefined) throw new QuantizationError(`format ${fmt.name} needs "${m}.input_amax" in the activation statistics`);
      entry.inputAmax = a;
    }
    work.set(m, entry);
  }

  // -- 1. AWQ: smoothing and folding, as per-chunk edits
  if (fmt.awq) {
    for (const e of work.values()) {
      const given = stats.get(`${e.module}.pre_quant_scale`);
      if (given && given.length !== e.K) {
        throw new QuantizationError(`statistic "${e.module}.pre_quant_scale" has ${given.length} values, expected ${e.K}`);
      }
      // stored in the weight dtype, so round first; ones when no AWQ search ran (then nothing changes)
      e.pqs = given ? given.map((x) => roundToDType(x, e.dtype)) : new Float32Array(e.K).fill(1);
      if (given) {
        if (e.pqs.some((x) => !(x > 0) || !Number.isFinite(x))) {
          throw new QuantizationError(`statistic "${e.module}.pre_quant_scale" must be positive and finite`);
        }
        e.ops.push({ kind: 'divCol', s: e.pqs }); // W' = W / pqs, as the AWQ search leaves it
        const ch = stats.get(`${e.module}.input_channel_amax`);
        if (ch && e.inputAmax !== undefined) {
          // amax of x * pre_quant_scale, as ModelOpt's apply_pre_quant_scale_and_smooth computes it:
          // the per-channel amax cast to the weight dtype, times the f32 scale (f32 products), the
          // max, cast back to the weight dtype: dtype(max_k f32(dtype(amax_k) * pqs_k)).
          let m = 0;
          for (let k = 0; k < e.K; k++) m = Math.max(m, Math.fround(roundToDType(ch[k]!, e.dtype) * given[k]!));
          e.inputAmax = roundToDType(m, e.dtype);
        }
      }
    }
    if (fmt.foldsIntoPreviousLinear) {
      for (const f of layout.linearFolds) {
        const from = work.get(f.from);
        const into = work.get(f.into);
        if (!from?.pqs || !into || from.pqs.length !== into.N) continue;
        // ones (no AWQ search ran) change nothing: no edit, so the chunks keep the plain kernels' path
        if (from.pqs.some((x) => x !== 1)) into.ops.push({ kind: 'mulRow', s: from.pqs });
        const bias = byName.get(`${f.into}.bias`);
        if (bias) {
          const b = decodeToFloat32(await bias.read(), bias.dtype);
          for (let j = 0; j < b.length; j++) b[j] = roundToDType(Math.fround(b[j]! * from.pqs[j]!), into.dtype);
          replaced.set(bias.name, encodeFromFloat32(b, into.dtype));
        }
        from.pqs = undefined;
      }
    }
    // linears that read one input get the mean of their scales (each re-smoothed to it); folded into
    // the norm before them where there is one, else kept by each (experts: spec §8.4)
    const resmooth = async (members: Work[], norm: string | undefined) => {
      const K = members[0]!.K;
      const mean = new Float32Array(K);
      for (let k = 0; k < K; k++) {
        let s = 0;
        for (const e of members) s = Math.fround(s + e.pqs![k]!);
        mean[k] = roundToDType(Math.fround(s / members.length), members[0]!.dtype);
      }
      for (const e of members) {
        if (e.pqs!.some((x, k) => x !== mean[k])) e.ops.push({ kind: 'resmooth', old: e.pqs!, new: mean });
        e.pqs = norm ? undefined : mean;
      }
      if (!norm) return;
      const nt = tensor(`${norm}.weight`);
      const nw = decodeToFloat32(await nt.read(), nt.dtype, nt.name);
      const ndt = nt.dtype as FloatDType;
      for (let k = 0; k < nw.length; k++) nw[k] = roundToDType(Math.fround(nw[k]! * mean[k]!), ndt);
      replaced.set(nt.name, encodeFromFloat32(nw, ndt));
    };
    // MoE first: each projection averaged across the experts of the layer (ModelOpt's get_experts_list
    // with preprocess_linear_fusion(resmooth_only=True)), then each expert's gate and up as a fused pair
    for (const list of layout.expertLists ?? []) {
      const members = list.map((m) => work.get(m)).filter((e): e is Work => e !== undefined && e.pqs !== undefined);
      if (members.length === list.length && members.length >= 2) await resmooth(members, undefined);
    }
    for (const g of layout.groups) {
      const members = g.members.map((m) => work.get(m)).filter((e): e is Work => e !== undefined);
      if (members.length !== g.members.length || members.length < 2) continue;
      await resmooth(members, g.norm);
    }
    for (const e of work.values()) {
      if (e.pqs && !keepsPreQuantScale(plan, e.module)) {
        throw new QuantizationError(`internal: ${e.module} kept a pre_quant_scale the plan folded away`);
      }
    }
  }

  // -- 2. input scales (statistics only): one per fused group, one per projection type of a layer's experts
  // (MoE, spec families.md §1.3: an expert that saw no token, amax 0, takes its siblings' maximum)
  if (fmt.inputScaleDivisor !== undefined) {
    if (fmt.unifyGroups) for (const g of layout.groups) unifyMax(work, g.members, 'inputAmax');
    for (const g of layout.sharedInputScale ?? []) unifyMax(work, g, 'inputAmax');
  }
  awqClipRatios(work, fmt, stats);

  // -- 3. the weight amax, by a scan pass, and the codes, streamed; in parts (see LayerParts)
  const needsAmax = fmt.needsWeightAmax;
  // linears whose weight amax is shared (fused siblings: weight_scale_2 of q/k/v; an expert's gate and
  // up in every format, spec families.md §1.3) are scanned together: the components of that relation
  const components = needsAmax ? amaxComponents(work, [...(fmt.unifyGroups ? layout.groups.map((g) => g.members) : []), ...(layout.sharedWeightScale ?? [])]) : [...work.values()].map((e) => [e]);
  const partsOf = unit.kind === 'layer' ? partition(components, partBytes) : [components.flat()];
  const count = partsOf.length;
  const weightName = (e: Work) => (e.fused ? e.module : `${e.module}.weight`);
  const laterWeights = new Set(partsOf.slice(1).flat().map(weightName));

  async function* parts(): AsyncGenerator<QuantizedUnit> {
    for (let i = 0; i < count; i++) {
      const members = partsOf[i]!;
      // Every format scans, even those without a per-tensor scale: a NaN/Inf is then reported before any
      // byte of the part is written, and the codes pass reads from the page cache. Measured on the
      // 8B-shaped bench, fp8_pb_wo ran ~15% faster this way than in one pass reading with O_DIRECT.
      await Promise.all(
        members.map(async (e) => {
          const amax = await scanAmax(e, pool);
          if (needsAmax) e.weightAmax = e.clipRatio === undefined ? amax : Math.fround(amax * e.clipRatio);
        }),
      );
      if (needsAmax) {
        if (fmt.unifyGroups) for (const g of layout!.groups) unifyMax(work, g.members, 'weightAmax');
        for (const g of layout!.sharedWeightScale ?? []) unifyMax(work, g, 'weightAmax');
      }
      // scales now, codes streamed on demand
      const shared = { primed: 0 };
      let previous: Stream | undefined;
      const linears = members.map((e): QuantizedLinear => {
        const inputScale = e.inputAmax === undefined ? undefined : e.inputAmax === 0 ? 1 : Math.fround(e.inputAmax / fmt.inputScaleDivisor!);
        const q: QuantizedLinear = { module: e.module, N: e.N, K: e.K, dtype: e.dtype, inputScale, preQuantScale: e.pqs, chunks: () => streamChunks(st, fmt, pool) };
        const st: Stream = { e, q, specs: undefined, launched: 0, primed: [], started: false, shared };
        if (previous) previous.next = st;
        previous = st;
        if (e.fused) q.fused = { E: e.fused.E, A: e.fused.A, B: e.fused.B };
        if (needsAmax) Object.assign(q, fmt.tensorScales(e.weightAmax!));
        return q;
      });
      const mine = new Set(members.map(weightName));
      yield {
        ...unit,
        part: count > 1 ? { index: i, count } : undefined,
        plan,
        // the first part carries everything but the later parts' weights (norms, routers, biases, excluded linears)
        tensors: unit.tensors.filter((t) => (i === 0 ? !laterWeights.has(t.name) : mine.has(t.name))),
        linears,
        replaced: i === 0 ? replaced : new Map(),
        kvScales: i === 0 ? kvScales : new Map(),
      };
    }
  }
  return { count, parts: parts() };
}

/**
 * Source bytes a part of a layer holds at least, its last part excepted (see LayerParts): half the
 * machine's memory, at least 128 MiB. A layer that fits is not cut at all: its scan pass, then its
 * codes pass from the page cache. Smaller parts interleave one part's codes with the next one's scan,
 * which on 2 cores was slower, the two competing for the cores: the DeepSeek-shaped NVFP4 export
 * (an 11 GB MoE layer) took 23.5-25.7 s whole and 29-34 s in 128 MiB or 1 GiB parts, whether
 * the parts overlapped or ran one after the other (2026-12-07, 2 x AMD EPYC). A layer larger than
 * half the memory (Llama 4 Maverick's 32 GB MoE layers on a 24 GiB machine) is cut, so that its
 * codes pass does not read from the disk again what its scan pass read.
 */
export function defaultPartBytes(): number {
  return Math.max(128 * 2 ** 20, Math.floor(totalmem() / 2));
}

/** Groups of linears joined by any shared-amax relation (union of overlapping groups), in the order of `work`. */
function amaxComponents(work: Map<string, Work>, relations: readonly (readonly string[])[]): Work[][] {
  const root = new Map<string, string>([...work.keys()].map((m) => [m, m]));
  const find = (m: string): string => {
    let r = m;
    while (root.get(r) !== r) r = root.get(r)!;
    root.set(m, r);
    return r;
  };
  for (const g of relations) {
    const present = g.filter((m) => work.has(m));
    for (const m of present.slice(1)) root.set(find(m), find(present[0]!));
  }
  const comps = new Map<string, Work[]>();
  for (const [m, e] of work) {
    const r = find(m);
    comps.set(r, [...(comps.get(r) ?? []), e]);
  }
  return [...comps.values()];
}

/** Consecutive components gathered into parts of at least `bytes` of source weights (the last part may hold less). */
function partition(components: Work[][], bytes: number): Work[][] {
  const out: Work[][] = [];
  let cur: Work[] = [];
  let size = 0;
  for (const c of components) {
    cur.push(...c);
    size += c.reduce((a, e) => a + e.N * e.tensor.rowBytes, 0);
    if (size >= bytes) {
      out.push(cur);
      cur = [];
      size = 0;
    }
  }
  if (cur.length > 0 || out.length === 0) out.push(cur);
  return out;
}

/** Sets `key` of every present member of `group` to their maximum. */
function unifyMax(work: Map<string, Work>, group: readonly string[], key: 'weightAmax' | 'inputAmax'): void {
  const members = group.map((m) => work.get(m)).filter((e): e is Work => e !== undefined && e[key] !== undefined);
  if (members.length < 2) return;
  const max = Math.max(...members.map((e) => e[key]!));
  for (const e of members) e[key] = max;
}

/**
 * AWQ-clip's results (`<module>.awq_clip_ratio`, a per-tensor amax ratio for NVFP4;
 * `<module>.awq_clip_ratios` [N, K/G] per block for INT4), on the linears whose weight the export
 * changes no further than its own smoothing: ModelOpt re-calibrates by max the weight amax of a
 * linear re-smoothed to its siblings' mean scale or given a following linear's scale in its rows,
 * which discards the clip (spec §8.2-8.3). Formats without awqClip ignore them. Checked here, before
 * any scan; the per-tensor ratio multiplies the amax once its scan is done.
 */
function awqClipRatios(work: Map<string, Work>, fmt: FormatSpec, stats: Stats): void {
  if (!fmt.awqClip) return;
  for (const e of work.values()) {
    if (e.ops.some((op) => op.kind !== 'divCol') || e.fused) continue;
    if (fmt.awqClip === 'global') {
      const r = scalarStat(stats, `${e.module}.awq_clip_ratio`);
      if (r === undefined) continue;
      if (!(r > 0 && r <= 1)) throw new QuantizationError(`statistic "${e.module}.awq_clip_ratio" is ${r}; expected a ratio in (0, 1]`);
      e.clipRatio = r;
    } else {
      const r = stats.get(`${e.module}.awq_clip_ratios`);
      if (!r) continue;
      const G = fmt.groupSize!;
      if (r.length !== (e.N * e.K) / G) throw new QuantizationError(`statistic "${e.module}.awq_clip_ratios" has ${r.length} values, expected ${(e.N * e.K) / G}`);
      if (r.some((x) => !(x > 0 && x <= 1))) throw new QuantizationError(`statistic "${e.module}.awq_clip_ratios" must hold ratios in (0, 1]`);
      e.clip = r;
    }
  }
}

function chunkStarts(N: number, rows: number): number[] {
  const s: number[] = [];
  for (let r = 0; r < N; r += rows) s.push(r);
  return s;
}

async function readChunk(e: Work, pool: KernelPool, row0: number, rows: number): Promise<{ slot: Slot; src: Uint8Array; fp8Source?: ChunkInput['fp8Source'] }> {
  const slot = await span('slot-wait', 0, e.module, () => pool.acquire(rows * e.tensor.rowBytes));
  try {
    return { slot, ...(await span('scan-read', rows * e.tensor.rowBytes, e.module, () => readRowsInto(e.tensor, row0, rows, slot))) };
  } catch (err) {
    pool.release(slot);
    throw err;
  }
}

/**
 * Rows [row0, row0 + rows) of a source into the slot. For an FP8-block source the FP8 codes and the
 * tile scales are read as stored, and the kernel worker expands them (so the main thread never
 * dequantizes): `src` is then the bf16-sized region whose first half holds the codes.
 */
async function readRowsInto(source: TensorSource, row0: number, rows: number, slot: Slot): Promise<{ src: Uint8Array; fp8Source?: ChunkInput['fp8Source'] }> {
  const parts = fp8BlockParts(source);
  if (!parts) return { src: await source.readRows(row0, row0 + rows, slot.src) };
  const K = source.shape[1]!;
  await parts.q.readRows(row0, row0 + rows, slot.src);
  const scales = decodeToFloat32(await parts.scaleInv.readRows(Math.floor(row0 / 128), Math.ceil((row0 + rows) / 128)), 'F32', parts.scaleInv.name);
  return { src: slot.src.subarray(0, rows * K * 2), fp8Source: { scales, BK: Math.ceil(K / 128) } };
}

function nonFiniteError(e: Work, row0: number, index: number, value: number): QuantizationError {
  const row = row0 + Math.floor(index / e.K);
  return new QuantizationError(
    `${e.tensor.origin}: tensor "${e.tensor.name}" has ${value} at row ${row}, column ${index % e.K}; refusing to quantize (a NaN/Inf scale breaks every engine)`,
  );
}

/** Pass 1: max |W| after the edits, chunk by chunk in the workers; NaN/Inf is an error naming the element. */
async function scanAmax(e: Work, pool: KernelPool): Promise<number> {
  const rows = pool.rowsPerChunk(e.K, e.tensor.rowBytes / e.K, 1);
  const results = await Promise.all(
    chunkStarts(e.N, rows).map(async (row0) => {
      const n = Math.min(rows, e.N - row0);
      const { slot, src, fp8Source } = await readChunk(e, pool, row0, n);
      try {
        const r = await span('scan-kernel', src.length, e.module, () => pool.run({ kind: 'scan', src, dtype: e.dtype, row0, rows: n, K: e.K, ops: e.ops, wasm: slot.wasm, lut: slot.lut, fp8Source }));
        if (r.nonFinite) throw nonFiniteError(e, row0, r.nonFinite.index, r.nonFinite.value);
        return r.amax!;
      } finally {
        pool.release(slot);
      }
    }),
  );
  return Math.max(0, ...results);
}

/**
 * The chunks of pass 2: row ranges of the weight; for a fused expert parameter in a block format,
 * each expert's input rows in bands of a multiple of the block, read transposed ([B, band]: the
 * block runs along the input axis) from the stored [A, B] rows, which are contiguous.
 */
function chunkSpecs(e: Work, fmt: FormatSpec, pool: KernelPool): ChunkSpec[] {
  const el = e.tensor.rowBytes / e.K;
  if (e.fused && fmt.fused?.layout === 'bands') {
    const { E, A, B, source } = e.fused;
    const band = Math.min(A, pool.rowsPerChunk(B, el, 16));
    const specs: ChunkSpec[] = [];
    for (let expert = 0; expert < E; expert++) {
      for (let a0 = 0; a0 < A; a0 += band) {
        const a1 = Math.min(A, a0 + band);
        specs.push({ source: transposed(rowRange(expertSlice(source, expert), a0, a1)), row0: 0, rows: B, K: a1 - a0, band: { expert, a0, a1 } });
      }
    }
    return specs;
  }
  const rows = pool.rowsPerChunk(e.K, el, fmt.rowMultiple);
  return chunkStarts(e.N, rows).map((row0) => ({ source: e.tensor, row0, rows: Math.min(rows, e.N - row0), K: e.K }));
}

/**
 * The pass-2 state of one linear. A unit's linears are linked in the order a writer consumes them,
 * so that once a linear has launched all its chunks, the next linears' first chunks start in the
 * spare slots (`primed`): a layer of many small tensors (hundreds of experts of one chunk each)
 * then keeps the workers busy across tensor boundaries instead of waiting at each one.
 */
interface Stream {
  e: Work;
  q: QuantizedLinear;
  specs: ChunkSpec[] | undefined;
  launched: number;
  /** Chunks started ahead by the linear before it, not yet claimed. */
  primed: Promise<QuantizedChunk>[];
  started: boolean;
  next?: Stream;
  /** Shared by a unit's streams: chunks primed and not yet claimed, across all of them. */
  shared: { primed: number };
}

function specsOf(st: Stream, fmt: FormatSpec, pool: KernelPool): ChunkSpec[] {
  return (st.specs ??= chunkSpecs(st.e, fmt, pool));
}

function start(st: Stream, fmt: FormatSpec, pool: KernelPool): Promise<QuantizedChunk> {
  const p = quantizeChunk(st.e, fmt, st.q, pool, specsOf(st, fmt, pool)[st.launched++]!);
  p.catch(() => undefined); // surfaced when awaited
  return p;
}

/** Pass 2: codes and scales, a few chunks ahead of the consumer (and into the next linears, see Stream). */
async function* streamChunks(st: Stream, fmt: FormatSpec, pool: KernelPool): AsyncGenerator<QuantizedChunk> {
  if (st.started) throw new QuantizationError(`${st.e.module}: chunks() iterated twice`);
  st.started = true;
  const specs = specsOf(st, fmt, pool);
  // chunks in flight, primed ones included: every slot but the one the consumer holds and one for a concurrent scan
  const depth = Math.max(1, pool.slots - 2);
  const inflight = st.primed.splice(0);
  st.shared.primed -= inflight.length;
  const launch = () => {
    // at least one of its own, whatever is primed elsewhere (a consumer that takes linears out of order still progresses)
    if (st.launched < specs.length && (inflight.length === 0 || inflight.length + st.shared.primed < depth)) inflight.push(start(st, fmt, pool));
  };
  const primeAhead = () => {
    for (let nx = st.next; nx && inflight.length + st.shared.primed < depth; nx = nx.next) {
      if (nx.started) break;
      const ns = specsOf(nx, fmt, pool);
      while (nx.launched < ns.length && inflight.length + st.shared.primed < depth) {
        nx.primed.push(start(nx, fmt, pool));
        st.shared.primed++;
      }
      if (nx.launched < ns.length) break;
    }
  };
  for (let i = 0; i < depth; i++) launch();
  try {
    while (inflight.length > 0) {
      const c = await inflight.shift()!;
      launch();
      if (st.launched === specs.length) primeAhead();
      yield c;
    }
  } finally {
    // consumer stopped early or a chunk failed: return the slots of the ones still in flight
    for (const p of inflight) void p.then((c) => c.release(), () => undefined);
  }
}

async function quantizeChunk(e: Work, fmt: FormatSpec, q: QuantizedLinear, pool: KernelPool, spec: ChunkSpec): Promise<QuantizedChunk> {
  const { row0, rows, K } = spec;
  const bytes = rows * K * (e.tensor.rowBytes / e.K);
  const slot = await span('slot-wait', 0, e.module, () => pool.acquire(bytes));
  let read: { src: Uint8Array; fp8Source?: ChunkInput['fp8Source'] };
  try {
    read = await span('read', bytes, e.module, () => readRowsInto(spec.source, row0, rows, slot));
  } catch (err) {
    pool.release(slot);
    throw err;
  }
  const scale = fmt.kernelScale(q);
  const ng = e.clip ? K / fmt.groupSize! : 0;
  const clip = e.clip?.slice(row0 * ng, (row0 + rows) * ng); // a copy: a view would carry the whole array to the worker
  const { task, codes, scales, packed } = chunkTask(fmt.kernel, slot, { src: read.src, dtype: e.dtype, row0, rows, K, ops: e.ops, fp8Source: read.fp8Source }, scale, clip);
  let released = false;
  const release = () => {
    if (!released) {
      released = true;
      pool.release(slot);
    }
  };
  try {
    const r = await span('kernel', bytes, e.module, () => pool.run(task));
    if (r.nonFinite) {
      if (spec.band) throw new QuantizationError(`${e.tensor.origin}: tensor "${e.module}" has ${r.nonFinite.value} in expert ${spec.band.expert}; refusing to quantize`);
      throw nonFiniteError(e, row0, r.nonFinite.index, r.nonFinite.value);
    }
  } catch (err) {
    release();
    throw err;
  }
  // `codes` on first read (NVFP4 unpacks them from `packed`), then whatever an operator sets
  let own: Uint8Array | Int8Array | undefined;
  return {
    row0,
    rows,
    get codes() {
      return (own ??= codes());
    },
    set codes(c) {
      own = c;
    },
    scales,
    packed,
    slot,
    release,
    band: spec.band,
  };
}
