/** `rxquant calibrate`: the statistics of a whole model, written as the safetensors file `quantize --stats` reads. */
import { lastValueFrom, reduce, tap } from 'rxjs';
import { readCheckpoint } from '../operators/readCheckpoint.js';
import { calibrate, type CalibrateOptions } from '../operators/calibrate.js';
import type { Stats } from './export/stats.js';
import { planShards, ShardWriter } from './safetensors/writer.js';
import { dirname, basename, join } from 'node:path';
import { rename, rm } from 'node:fs/promises';

/** `options.hfConfig`: `modelDir` is a Megatron-Core torch_dist checkpoint read with that HF folder's config.json. */
export async function calibrateModel(modelDir: string, samples: number[][], options: CalibrateOptions & { hfConfig?: string } = {}): Promise<Stats> {
  return lastValueFrom(
    readCheckpoint(modelDir, { layersInFlight: 1, hfConfig: options.hfConfig }).pipe(
      calibrate(samples, options),
      tap((u) => u.release()),
      reduce((all, u) => {
        for (const [k, v] of u.stats!) all.set(k, v);
        if (u.kind === 'rest') void u.model.close();
        return all;
      }, new Map() as Stats),
    ),
  );
}

/** Per-tensor statistics are 0-d tensors, as in ../shared/data/reference. */
export function isScalarStat(name: string): boolean {
  return /\.(input_amax|output_amax|k_amax|v_amax|awq_alpha|awq_clip_ratio)$/.test(name);
}

/** Writes statistics as a single safetensors file (F32 tensors), atomically. */
export async function writeStats(path: string, stats: Stats): Promise<void> {
  const names = [...stats.keys()].sort();
  const plan = planShards(names.map((n) => ({ name: n, dtype: 'F32', shape: isScalarStat(n) ? [] : [stats.get(n)!.length] })), Number.MAX_SAFE_INTEGER);
  const staging = join(dirname(path), `.${basename(path)}.rxquant-stats`);
  const w = await ShardWriter.create(staging, plan, { overwrite: true });
  for (const n of names) {
    const v = stats.get(n)!;
    await w.write(n, new Uint8Array(v.buffer, v.byteOffset, v.byteLength));
  }
  await w.finish();
  await rename(join(staging, 'model.safetensors'), path);
  await rm(staging, { recursive: true, force: true });
}
