/**
 * Calibration's speed for one model on this machine, measured: layer 0's forward pass as calibrate
 * runs it (the family's own forward, the default engine, every core), on the embeddings of
 * `seqLen` deterministic token ids, so `plan` can estimate a calibration from what it timed rather
 * than from a constant.
 */
import { cpus } from 'node:os';
import { defaultGemm, type GemmEngine } from '../forward/gemm.js';
import { ropeTables } from '../forward/rope.js';
import { embed, weightSource } from '../forward/weights.js';
import type { SourceModel } from '../model.js';

export interface CalibrationRate {
  /** Loading layer 0's weights for the engine (once per layer). */
  loadSeconds: number;
  /** One sample of `seqLen` tokens through layer 0, weights loaded. */
  sampleSeconds: number;
  seqLen: number;
}

/**
 * Times layer 0: families that load a layer whole are loaded once and run twice (the second run
 * timed); families that run a layer a part at a time over all samples (mixture-of-experts) are
 * run over one and over two samples, the difference being one sample's time.
 */
export async function measureCalibrationRate(model: SourceModel, seqLen: number, gemm?: GemmEngine): Promise<CalibrationRate> {
  const cfg = model.config;
  const src = weightSource(model);
  const engine = gemm ?? (await defaultGemm(cpus().length));
  const layout = model.layers[0]!;
  const vocab = src.tensors.get(`${model.arch.names.embed}.weight`)?.shape[0] ?? cfg.vocabSize;
  // a spread of ids (a fixed stride through the vocabulary), not one token repeated: routing and
  // attention then see varied inputs
  const ids = Array.from({ length: seqLen }, (_, t) => (t * 7919 + 13) % vocab);
  const h0 = await embed(src, ids, cfg.hiddenSize, model.arch.names);
  const { cos, sin } = ropeTables(cfg.rope, cfg.headDim, seqLen);
  const forward = model.arch.forward;
  try {
    if (forward.overSamples) {
      const over = async (count: number) => {
        const states: Float32Array[] = Array.from({ length: count }, () => h0.slice());
        const t = performance.now();
        await forward.overSamples!(src, layout, cfg, engine, { count, tokens: () => seqLen, get: async (i) => states[i]!, set: async (i, x) => void (states[i] = x) }, cos, sin, {});
        return (performance.now() - t) / 1000;
      };
      const one = await over(1);
      const two = await over(2);
      const sampleSeconds = Math.max(two - one, 1e-6);
      return { loadSeconds: Math.max(one - sampleSeconds, 0), sampleSeconds, seqLen };
    }
    let t = performance.now();
    const layer = await forward.load(src, layout, cfg, engine);
    const loadSeconds = (performance.now() - t) / 1000;
    try {
      await forward.run(h0.slice(), seqLen, layer, cfg, cos, sin, {}); // warm: sessions, arenas
      t = performance.now();
      await forward.run(h0.slice(), seqLen, layer, cfg, cos, sin, {});
      return { loadSeconds, sampleSeconds: (performance.now() - t) / 1000, seqLen };
    } finally {
      await layer.release();
    }
  } finally {
    engine.dropSpareBuffers?.();
  }
}

/** Estimated seconds of calibrating every layer on `samples` samples at this rate. */
export function calibrationSeconds(rate: CalibrationRate, layers: number, samples: number): number {
  return layers * (rate.loadSeconds + samples * rate.sampleSeconds);
}
