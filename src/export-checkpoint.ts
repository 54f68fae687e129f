/** The whole export as one call: the operator chain the CLI runs. */
import { lastValueFrom, tap } from 'rxjs';
import { readCheckpoint } from '../operators/readCheckpoint.js';
import { quantize } from '../operators/quantize.js';
import { pack } from '../operators/pack.js';
import { writeShards, type WriteEvent } from '../operators/writeShards.js';
import { calibrate, type CalibrateProgress } from '../operators/calibrate.js';
import { identity } from 'rxjs';
import { createHash } from 'node:crypto';
import { readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { resolveTorchDist } from './sources/dcp.js';
import { openCheckpoint } from './safetensors/checkpoint.js';
import type { GemmEngine } from './forward/gemm.js';
import type { FormatName } from './export/formats.js';
import type { ExportOptions, ExportPlan } from './export/plan.js';
import { formatSpec } from './formats/registry.js';
import type { AwqAlgorithm, AwqSearchOptions } from './calibration/awq-layer.js';

/** The AWQ search the options ask for: AWQ formats with calibration samples, unless 'none'. */
export function awqSearchFor(o: Pick<ExportCheckpointOptions, 'format' | 'calibration' | 'awq'>): AwqSearchOptions | undefined {
  const format = formatSpec(o.format);
  const algorithm = o.awq ?? 'lite';
  if (!format.awq || !o.calibration || algorithm === 'none') return undefined;
  return { format, algorithm };
}

export interface ExportCheckpointOptions extends ExportOptions {
  model: string;
  /** `model` is a Megatron-Core torch_dist checkpoint; config.json and the side files come from this HF model folder. */
  hfConfig?: string;
  format: FormatName;
  out: string;
  maxShardSize?: string | number;
  workers?: number;
  /** Source bytes per kernel chunk (default 8 MiB). */
  chunkBytes?: number;
  /** A layer with more source weight bytes than this is exported in parts (quantize's partBytes, default half the memory). */
  partBytes?: number;
  overwrite?: boolean;
  /** O_DIRECT for the output and for tensors copied through (default true); false: the page cache. */
  directIO?: boolean;
  layersInFlight?: number;
  /** Calibration samples (token ids): run the forward pass inline, layer by layer, for the statistics. */
  calibration?: number[][];
  /**
   * AWQ formats with calibration samples: the search that picks each pre_quant_scale (default 'lite',
   * as ModelOpt); 'none': pre_quant_scale of ones (plain round-to-nearest) unless `stats` give one.
   */
  awq?: AwqAlgorithm;
  onCalibrate?: (p: CalibrateProgress) => void;
  /** GEMM engine of the calibration forward pass. */
  gemm?: GemmEngine;
  onPlan?: (plan: ExportPlan) => void;
  /** Keep a journal so an interrupted run can resume (the CLI does). */
  resumable?: boolean;
  /** Discard an interrupted export made with other options. */
  restart?: boolean;
  /** Record finished units for resume after this many bytes (default "2GB"). */
  checkpointEvery?: string | number;
  onResume?: (doneUnits: number) => void;
  onTensor?: (name: string, bytes: number) => void;
  onEvent?: (e: WriteEvent) => void;
}

/**
 * A fingerprint of everything that determines the output bytes: rxquant's version, the source's
 * shard headers and sizes, the format and options, the statistics or calibration samples. An
 * interrupted export resumes only under the same fingerprint.
 */
export async function exportFingerprint(o: ExportCheckpointOptions): Promise<string> {
  const h = createHash('sha256');
  const pkg = JSON.parse(await readFile(new URL('../../package.json', import.meta.url), 'utf8').catch(() => readFile(new URL('../package.json', import.meta.url), 'utf8')));
  // layout 2: tensors in a shard ordered by the safetensors crate's dtype rank (an export interrupted under
  // the earlier order must not be resumed into this one); units 2: the journal records layers in parts
  // ("layer 7 part 2/5"), which a journal of whole layers must not be read as
  h.update(JSON.stringify({ v: pkg.version, layout: 2, units: 2, format: o.format, awq: awqSearchFor(o)?.algorithm ?? 'none', kv: o.kvCache ?? 'fp8_cast', exclude: o.exclude ?? [], shard: String(o.maxShardSize ?? '10GB') }));
  if (o.hfConfig) {
    // a Megatron checkpoint: its .metadata (every chunk's file and byte range), its files' sizes, and the HF config
    const dir = await resolveTorchDist(o.model);
    h.update(await readFile(join(dir, '.metadata')));
    for (const f of (await readdir(dir)).filter((n) => n.endsWith('.distcp')).sort()) h.update(`${f}:${(await stat(join(dir, f))).size};`);
    h.update(await readFile(join(o.hfConfig, 'config.json')));
  } else {
    const ck = await openCheckpoint(o.model);
    try {
      for (const f of ck.files) {
        h.update(`${f.name}:${f.size}:`);
        for (const t of f.header.tensors) h.update(`${t.name}|${t.dtype}|${t.shape.join(',')}|${t.dataOffsets.join(',')};`);
      }
    } finally {
      await ck.close();
    }
  }
  for (const [k, v] of [...(o.stats ?? new Map())].sort(([a], [b]) => (a < b ? -1 : 1))) h.update(k).update(new Uint8Array(v.buffer, v.byteOffset, v.byteLength));
  for (const s of o.calibration ?? []) h.update(Int32Array.from(s));
  return h.digest('hex');
}

/**
 * Kernel chunks while calibrating: the export then waits on the forward pass (seconds per layer at
 * 8B against a fraction of one to quantize it), and smaller chunks keep the kernel pool's slots at
 * ~15 MB instead of ~60 MB next to a layer in f32.
 */
const CALIBRATION_CHUNK_BYTES = 2 * 2 ** 20;

export async function exportCheckpoint(o: ExportCheckpointOptions): Promise<Extract<WriteEvent, { type: 'done' }>> {
  const fingerprint = o.resumable ? await exportFingerprint(o) : undefined;
  const last = await lastValueFrom(
    readCheckpoint(o.model, { layersInFlight: o.layersInFlight, hfConfig: o.hfConfig }).pipe(
      o.calibration ? calibrate(o.calibration, { onProgress: o.onCalibrate, gemm: o.gemm, awq: awqSearchFor(o) }) : identity,
      quantize(o.format, { stats: o.stats, kvCache: o.kvCache, exclude: o.exclude, workers: o.workers, chunkBytes: o.chunkBytes ?? (o.calibration ? CALIBRATION_CHUNK_BYTES : undefined), partBytes: o.partBytes, onPlan: o.onPlan }),
      pack(),
      writeShards(o.out, { maxShardSize: o.maxShardSize, overwrite: o.overwrite, fingerprint, restart: o.restart, onResume: o.onResume, onTensor: o.onTensor, checkpointEvery: o.checkpointEvery, directIO: o.directIO }),
      tap((e) => o.onEvent?.(e)),
    ),
  );
  if (last.type !== 'done') throw new Error('export ended without completing');
  return last;
}
