/**
 * `rxquant plan`: what an export will write and need, without writing anything: output tensors and
 * bytes per shard, peak memory, disk needed against free space, an estimated time from a kernel
 * measurement on this machine, and which engines load the format.
 */
import { dirname, resolve } from 'node:path';
import { cpus } from 'node:os';
import { openModel } from './model.js';
import { openEagleWithTarget } from './eagle.js';
import { createPlan, quantizedShapes, type ExportOptions } from './export/plan.js';
import { awqCandidateBytes } from './calibration/awq.js';
import { DEFAULT_INPUT_CACHE_BYTES } from './calibration/input-cache.js';
import { calibrationSeconds, measureCalibrationRate } from './calibration/rate.js';
import { formatSpec } from './export/formats.js';
import { freeBytes, planShards } from './safetensors/writer.js';
import { formatBytes, parseSize } from './safetensors/size.js';
import { engineSupport } from './formats/registry.js';
import type { EngineSupport } from './formats/format.js';
import { KernelPool, DEFAULT_CHUNK_BYTES, SCRATCH_BYTES } from './kernels/pool.js';
import { chunkTask } from './kernels/chunk-task.js';
import type { FormatSpec } from './export/formats.js';

export interface PlanReport {
  model: string;
  format: string;
  quantAlgo: string;
  inputBytes: number;
  outputBytes: number;
  shards: { file: string; tensors: number; bytes: number }[];
  quantized: number;
  kept: { module: string; reason: string }[];
  excludeModules: string[];
  peakMemoryBytes: number;
  diskNeededBytes: number;
  diskFreeBytes: number | undefined;
  estimatedSeconds: number;
  estimateBasis: string;
  /** Of estimatedSeconds, the calibration's (layer 0's forward timed on this machine), when the export calibrates. */
  calibrationSeconds?: number;
  engines: EngineSupport[];
  warnings: string[];
}

export async function planExport(
  modelDir: string,
  format: string,
  o: ExportOptions & { out: string; maxShardSize?: string; workers?: number; calibration?: { samples: number; seqLen: number; awq?: boolean }; hfConfig?: string; base?: string },
): Promise<PlanReport> {
  const spec = formatSpec(format);
  // an EAGLE draft (`base`: its target): the draft is what is written, the target what calibration runs
  const draft = o.base ? await openEagleWithTarget(modelDir, o.base) : undefined; // its close() closes the target too
  const target = draft?.target;
  const model = draft ? draft.model : await openModel(modelDir, { hfConfig: o.hfConfig });
  try {
    const plan = createPlan(model, spec, { ...o, deferStatsCheck: true });
    const shards = draft ? planShards(plan.outputs, Number.MAX_SAFE_INTEGER, { metadata: null }) : planShards(plan.outputs, parseSize(o.maxShardSize ?? '10GB'));
    const inputBytes = [...model.checkpoint.tensors.values()].reduce((a, t) => a + t.byteLength, 0); // as stored (an FP8 source reads half of its BF16 size)
    const workers = o.workers ?? cpus().length;
    const slots = Math.max(2, workers) + 2;
    const slotBytes = 3 * DEFAULT_CHUNK_BYTES + DEFAULT_CHUNK_BYTES / 8 + 4096 + SCRATCH_BYTES;
    // Node + modules (~70 MiB), the slots, the copy buffer, headers; calibration holds one layer in f32 and the hidden states
    let peak = 70 * 2 ** 20 + slots * slotBytes + 16 * 2 ** 20;
    if (o.calibration) {
      const cfg = model.config;
      const layerParams = model.layers[0]!.linears.reduce((a, m) => a + model.tensors.get(`${m}.weight`)!.numel, 0);
      const tokens = o.calibration.samples * o.calibration.seqLen;
      peak += 2 * layerParams * 4 + tokens * cfg.hiddenSize * 4 * 2 + o.calibration.seqLen * (cfg.intermediateSize * 3 + cfg.hiddenSize * 4) * 4;
      if (o.calibration.awq) {
        // the AWQ search: the layer's linear inputs (one copy per shared input, capped by the spill
        // budget) and the largest linear's reference + candidates side by side
        const widths = new Map<string, number>();
        for (const m of model.layers[0]!.linears) {
          const [, K] = model.tensors.get(`${m}.weight`)!.shape as [number, number];
          const g = model.layers[0]!.groups.find((x) => x.members.includes(m));
          widths.set(g ? g.members[0]! : m, K);
        }
        peak += Math.min(DEFAULT_INPUT_CACHE_BYTES, tokens * [...widths.values()].reduce((a, k) => a + k, 0) * 4);
        peak += Math.max(...model.layers[0]!.linears.map((m) => awqCandidateBytes(model.tensors.get(`${m}.weight`)!.numel)));
      }
    }
    const free = await freeBytes(dirname(resolve(o.out)));
    let { seconds, basis } = await estimateSeconds(model, plan.format, workers, inputBytes, shards.totalSize);
    let calibrationS: number | undefined;
    if (o.calibration) {
      const { samples, seqLen } = o.calibration;
      // a draft's calibration runs the target up to the last layer the draft reads (the draft itself is one or two layers more)
      const runs = target ? target : model;
      const layers = draft && target ? (draft.eagle.useAux ? Math.max(...draft.eagle.auxLayerIds) + 1 : target.layers.length) + draft.eagle.config.numLayers : model.layers.length;
      const rate = await measureCalibrationRate(runs, seqLen);
      calibrationS = calibrationSeconds(rate, layers, samples);
      seconds += calibrationS;
      basis +=
        `; calibration ${samples} x ${seqLen} tokens through ${layers} layers${target ? ' of the target and the draft' : ''}: layer 0${target ? ' of the target' : ''} measured here, ` +
        `${(seqLen / rate.sampleSeconds).toFixed(0)} tokens/s, ${rate.loadSeconds.toFixed(1)} s to load` +
        (o.calibration.awq ? '; the AWQ search not included (about 40x the calibration of an 8B layer)' : '');
    } else basis += '; no calibration';
    const decisions = [...plan.decisions.values()];
    return {
      model: modelDir,
      format: spec.name,
      quantAlgo: spec.quantAlgo,
      inputBytes,
      outputBytes: shards.totalSize,
      shards: shards.shards.map((s) => ({ file: s.file, tensors: s.tensors.length, bytes: s.header.length + s.dataLength })),
      quantized: decisions.filter((d) => d.quantized).length,
      kept: decisions.filter((d) => !d.quantized).map((d) => ({ module: d.module, reason: d.reason! })),
      excludeModules: plan.hfQuantConfig.quantization.exclude_modules,
      peakMemoryBytes: peak,
      diskNeededBytes: shards.totalSize + shards.shards.reduce((a, s) => a + s.header.length, 0),
      diskFreeBytes: free,
      estimatedSeconds: seconds,
      estimateBasis: basis,
      ...(calibrationS !== undefined ? { calibrationSeconds: calibrationS } : {}),
      engines: engineSupport(spec.quantAlgo, quantizedShapes(plan.decisions)),
      warnings: plan.warnings,
    };
  } finally {
    await model.close();
  }
}

/**
 * Times this format's kernel on one real chunk of the model's first linear (and the read of it), then
 * scales to the whole input; the output is assumed written at 1 GB/s (O_DIRECT on this VM measured 1-2.8).
 */
async function estimateSeconds(model: Awaited<ReturnType<typeof openModel>>, format: FormatSpec, workers: number, inputBytes: number, outputBytes: number) {
  const t = model.tensors.get(`${model.layers[0]!.linears[0]}.weight`)!;
  const K = t.shape[1]!;
  const pool = new KernelPool(0);
  try {
    const rows = Math.min(t.rows, pool.rowsPerChunk(K, t.rowBytes / K, Math.max(2, format.rowMultiple)));
    const slot = await pool.acquire(rows * t.rowBytes);
    let start = performance.now();
    await t.readRows(0, rows, slot.src);
    const readS = (performance.now() - start) / 1000;
    const { task } = chunkTask(format.kernel, slot, { src: slot.src.subarray(0, rows * t.rowBytes), dtype: t.dtype as 'BF16', row0: 0, rows, K, ops: [] }, format.kernelScale({ weightScale: 1 / 448, weightScale2: 1 / 2688 }));
    await pool.run(task);
    start = performance.now();
    await pool.run(task);
    const kernelS = (performance.now() - start) / 1000;
    pool.release(slot);
    const bytes = rows * t.rowBytes;
    const kernelRate = (bytes / kernelS) * Math.max(1, workers) * 0.9;
    const readRate = Math.max(bytes / Math.max(readS, 1e-6), 1e9);
    const seconds = inputBytes / Math.min(kernelRate, readRate) + outputBytes / 1e9;
    return { seconds, basis: `${format.name} kernel ${formatBytes(kernelRate)}/s on ${Math.max(1, workers)} worker(s), read ${formatBytes(readRate)}/s, write 1 GB/s` };
  } finally {
    await pool.close();
  }
}

export function formatPlan(r: PlanReport): string {
  const L: string[] = [];
  L.push(`plan: ${r.model} -> ${r.format} (quant_algo ${r.quantAlgo}); nothing is written`);
  L.push(`linears: ${r.quantized} quantized, ${r.kept.length} kept in their dtype`);
  for (const k of r.kept.slice(0, 20)) L.push(`  kept ${k.module}: ${k.reason}`);
  if (r.kept.length > 20) L.push(`  ... ${r.kept.length - 20} more`);
  L.push(`exclude_modules: ${JSON.stringify(r.excludeModules)}`);
  L.push(`input ${formatBytes(r.inputBytes)} -> output ${formatBytes(r.outputBytes)} (${((r.outputBytes / r.inputBytes) * 100).toFixed(0)}%) in ${r.shards.length} shard(s):`);
  for (const s of r.shards) L.push(`  ${s.file}  ${s.tensors} tensors  ${formatBytes(s.bytes)}`);
  L.push(`peak memory: about ${formatBytes(r.peakMemoryBytes)}`);
  const free = r.diskFreeBytes === undefined ? 'unknown' : formatBytes(r.diskFreeBytes);
  const ok = r.diskFreeBytes === undefined || r.diskFreeBytes >= r.diskNeededBytes;
  L.push(`disk: needs ${formatBytes(r.diskNeededBytes)} (built in a temporary folder, renamed into place), ${free} free${ok ? '' : '  <-- NOT ENOUGH'}`);
  L.push(`estimated time: ${r.estimatedSeconds < 90 ? `${r.estimatedSeconds.toFixed(0)} s` : `${(r.estimatedSeconds / 60).toFixed(1)} min`} (${r.estimateBasis})`);
  L.push('engines:');
  for (const e of r.engines) L.push(`  ${e.loads ? 'loads in' : 'does not load in'} ${e.engine}: ${e.note}`);
  for (const w of r.warnings) if (!w.includes(' kept in ')) L.push(`warning: ${w}`);
  return L.join('\n');
}
