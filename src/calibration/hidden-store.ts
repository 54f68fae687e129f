/**
 * The hidden states of the calibration samples between layers: in memory, or in a temporary file
 * once they pass a memory budget (a 70B model's 32 x 512 tokens x 8192 f32 are 0.5 GB; ModelOpt's
 * 1024 samples would be 17 GB). With the file, one sample at a time is in memory.
 */
import { open, rm, mkdtemp, type FileHandle } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ModelConfig } from '../forward/config.js';
import type { GemmEngine } from '../forward/gemm.js';
import type { LayerHooks } from '../forward/layer.js';
import type { WeightSource } from '../forward/weights.js';
import type { LayerForward, LayerLayout } from '../models/base.js';

export interface HiddenStore {
  get(i: number): Promise<Float32Array>;
  set(i: number, h: Float32Array): Promise<void>;
  close(): Promise<void>;
  readonly spilled: boolean;
}

export const DEFAULT_HIDDEN_BUDGET = 2 * 2 ** 30;

export async function hiddenStore(lengths: number[], H: number, budgetBytes = DEFAULT_HIDDEN_BUDGET, dir = tmpdir()): Promise<HiddenStore> {
  const total = lengths.reduce((a, t) => a + t * H * 4, 0);
  if (total <= budgetBytes) {
    const mem: Float32Array[] = lengths.map((t) => new Float32Array(t * H));
    return { spilled: false, get: async (i) => mem[i]!, set: async (i, h) => void (mem[i] = h), close: async () => undefined };
  }
  const folder = await mkdtemp(join(dir, 'rxquant-hidden-'));
  const file: FileHandle = await open(join(folder, 'hidden.f32'), 'w+');
  const offsets: number[] = [];
  let o = 0;
  for (const t of lengths) {
    offsets.push(o);
    o += t * H * 4;
  }
  return {
    spilled: true,
    async get(i) {
      const h = new Float32Array(lengths[i]! * H);
      await file.read(new Uint8Array(h.buffer), 0, h.byteLength, offsets[i]!);
      return h;
    },
    async set(i, h) {
      await file.write(new Uint8Array(h.buffer, h.byteOffset, h.byteLength), 0, h.byteLength, offsets[i]!);
    },
    async close() {
      await file.close();
      await rm(folder, { recursive: true, force: true });
    },
  };
}

/**
 * One decoder layer over every sample's hidden state in `hidden`, in place: with the family's
 * `overSamples` (weights a part at a time: attention, then groups of experts) where it has one,
 * else the layer loaded whole and run on each sample in turn. Returns the seconds the whole layer's
 * weights took to load (undefined with `overSamples`, which loads as it goes).
 */
export async function layerOverSamples(
  forward: LayerForward,
  src: WeightSource,
  layout: LayerLayout,
  cfg: ModelConfig,
  gemm: GemmEngine,
  hidden: HiddenStore,
  lengths: readonly number[],
  cos: Float32Array,
  sin: Float32Array,
  hooks: LayerHooks,
): Promise<number | undefined> {
  if (forward.overSamples) {
    await forward.overSamples(src, layout, cfg, gemm, { count: lengths.length, tokens: (i) => lengths[i]!, get: (i) => hidden.get(i), set: (i, x) => hidden.set(i, x) }, cos, sin, hooks);
    return undefined;
  }
  const t0 = Date.now();
  const layer = await forward.load(src, layout, cfg, gemm);
  const loadSeconds = (Date.now() - t0) / 1000;
  try {
    for (let i = 0; i < lengths.length; i++) await hidden.set(i, await forward.run(await hidden.get(i), lengths[i]!, layer, cfg, cos, sin, hooks));
  } finally {
    await layer.release();
  }
  return loadSeconds;
}
