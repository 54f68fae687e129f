/** The whole export as one call: the operator chain the CLI runs. */
import { lastValueFrom, tap } from 'rxjs';
import { readCheckpoint } from '../../operators/readCheckpoint.js';
import { quantize } from '../../operators/quantize.js';
import { pack } from '../../operators/pack.js';
import { writeShards, type WriteEvent } from '../../operators/writeShards.js';
import { calibrate, type CalibrateProgress } from '../../operators/calibrate.js';
import { identity } from 'rxjs';
import type { GemmEngine } from '../forward/gemm.js';
import type { FormatName } from './formats.js';
import type { ExportOptions, ExportPlan } from './plan.js';

export interface ExportCheckpointOptions extends ExportOptions {
  model: string;
  format: FormatName;
  out: string;
  maxShardSize?: string | number;
  workers?: number;
  /** Source bytes per kernel chunk (default 8 MiB). */
  chunkBytes?: number;
  overwrite?: boolean;
  layersInFlight?: number;
  /** Calibration samples (token ids): run the forward pass inline, layer by layer, for the statistics. */
  calibration?: number[][];
  onCalibrate?: (p: CalibrateProgress) => void;
  /** GEMM engine of the calibration forward pass. */
  gemm?: GemmEngine;
  onPlan?: (plan: ExportPlan) => void;
  onEvent?: (e: WriteEvent) => void;
}

export async function exportCheckpoint(o: ExportCheckpointOptions): Promise<Extract<WriteEvent, { type: 'done' }>> {
  const last = await lastValueFrom(
    readCheckpoint(o.model, { layersInFlight: o.layersInFlight }).pipe(
      o.calibration ? calibrate(o.calibration, { onProgress: o.onCalibrate, gemm: o.gemm }) : identity,
      quantize(o.format, { stats: o.stats, kvCache: o.kvCache, exclude: o.exclude, workers: o.workers, chunkBytes: o.chunkBytes, onPlan: o.onPlan }),
      pack(),
      writeShards(o.out, { maxShardSize: o.maxShardSize, overwrite: o.overwrite }),
      tap((e) => o.onEvent?.(e)),
    ),
  );
  if (last.type !== 'done') throw new Error('export ended without completing');
  return last;
}
