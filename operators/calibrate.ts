import { concatMap, defer, type OperatorFunction } from 'rxjs';
import type { ModelUnit } from '../src/export/units.js';
import { StatsCollector } from '../src/calibration/collector.js';
import { defaultGemm, type GemmEngine } from '../src/forward/gemm.js';
import { cpus } from 'node:os';
import { hiddenStore, layerOverSamples, type HiddenStore } from '../src/calibration/hidden-store.js';
import { finalize } from 'rxjs';
import { embed, loadFinalNorm, weightSource } from '../src/forward/weights.js';
import { ropeTables } from '../src/forward/rope.js';
import { rmsnorm } from '../src/forward/ops.js';
import { loadMedusa } from '../src/models/medusa.js';
import { CalibrationDataError } from '../src/errors.js';
import { awqFormat, awqSearchLayer, layerInputCache, type AwqSearchOptions } from '../src/calibration/awq-layer.js';
import type { AwqInputCache } from '../src/calibration/input-cache.js';
import { AwqWorkspace } from '../src/calibration/awq.js';

export interface CalibrateProgress {
  layer: number;
  tokens: number;
  seconds: number;
  /** Of `seconds`, the time the AWQ search took (when it ran). */
  awqSeconds?: number;
  /** Of `seconds`, loading the layer's weights for the engine (families that load a layer whole). */
  loadSeconds?: number;
}

/**
 * Runs the model's own forward pass over the calibration samples, one decoder layer at a time as
 * units arrive (in order), and attaches the activation statistics each unit's linears saw
 * (`<module>.input_amax`, `.input_absmean`, `.input_channel_amax`, `<attn>.k_amax`/`.v_amax`) to
 * `unit.stats`; with `awq`, also each linear's AWQ `pre_quant_scale` from the search on its inputs.
 * Only the current layer's weights are held in f32; the hidden states of all samples stay in memory
 * between layers.
 *
 * @param samples token-id arrays (see `loadCalibration`), each run as one unpadded sequence
 * @example
 * ```ts
 * const samples = await loadCalibration('calib.txt', 'model', { samples: 32, seqLen: 512 });
 * readCheckpoint('model').pipe(calibrate(samples), quantize('nvfp4'), pack(), writeShards('out'));
 * // AWQ: the search picks each linear's pre_quant_scale for this format
 * readCheckpoint('model').pipe(calibrate(samples, { awq: { format: 'int4_awq', algorithm: 'lite' } }), quantize('int4_awq'), pack(), writeShards('out-awq'));
 * ```
 */
export interface CalibrateOptions {
  /** GEMM engine (default: onnxruntime with one thread per core when it loads, else JavaScript). */
  gemm?: GemmEngine;
  onProgress?: (p: CalibrateProgress) => void;
  /** Hidden states beyond this many bytes go to a temporary file (default 2 GiB). */
  memoryBudgetBytes?: number;
  /** Folder for that file (default: the OS temporary folder). */
  spillDir?: string;
  /**
   * AWQ search after each layer's forward pass (`awq_lite`, spec §11.3): adds `<module>.pre_quant_scale`
   * (and `.awq_alpha`, `.awq_loss`) for the linears the format quantizes. The layer's linear inputs are
   * kept for it (in memory up to `cacheBytes`, then in a temporary file in `spillDir`).
   */
  awq?: AwqSearchOptions;
}

export function calibrate(samples: number[][], options: CalibrateOptions = {}): OperatorFunction<ModelUnit, ModelUnit> {
  const onProgress = options.onProgress;
  if (samples.length === 0) throw new CalibrationDataError('calibrate: no samples');
  if (options.awq) awqFormat(options.awq); // an AWQ format, checked before any work
  return (source) =>
    defer(() => {
      let hidden: HiddenStore | undefined;
      let gemm: GemmEngine | undefined = options.gemm;
      let next = 0;
      const awqWorkspace = options.awq && new AwqWorkspace(cpus().length); // the search's buffers and candidate-building threads, reused layer after layer
      const tokens = samples.reduce((s, x) => s + x.length, 0);
      return source.pipe(
        concatMap(async (unit): Promise<ModelUnit> => {
          const started = Date.now();
          const model = unit.model;
          const cfg = model.config;
          const src = weightSource(model);
          gemm ??= await defaultGemm(cpus().length);
          if (!hidden) {
            hidden = await hiddenStore(samples.map((s) => s.length), cfg.hiddenSize, options.memoryBudgetBytes, options.spillDir);
            for (let i = 0; i < samples.length; i++) await hidden.set(i, await embed(src, samples[i]!, cfg.hiddenSize, model.arch.names));
          }
          const collector = new StatsCollector();
          let awqStats: Map<string, Float32Array> | undefined;
          let awqSeconds: number | undefined;
          let loadSeconds: number | undefined;
          if (unit.kind === 'layer') {
            if (unit.layer !== next) throw new Error(`calibrate needs layers in order: got layer ${unit.layer}, expected ${next}`);
            next++;
            const layout = model.layers[unit.layer]!;
            const maxT = Math.max(...samples.map((s) => s.length));
            const { cos, sin } = ropeTables(cfg.rope, cfg.headDim, maxT);
            const cache: AwqInputCache | undefined = options.awq && layerInputCache(layout, options.awq);
            const searched = new Set(layout.linears);
            const moduleOf = (role: string) => layout.observed?.[role] ?? layout.linears[layout.roles.indexOf(role)]!;
            const hooks = {
              linearInput: (role: string, x: Float32Array, T: number, K: number) => hooks.linearInputs([role], x, T, K),
              // q/k/v (gate/up) share one input: its statistics are taken once for all of them
              linearInputs: (roles: readonly string[], x: Float32Array, T: number, K: number) => {
                const modules = roles.map(moduleOf);
                collector.observeShared(modules, x, T, K);
                for (const module of modules) if (searched.has(module)) cache?.observe(module, x, T, K);
              },
              keysValues: (k: Float32Array, v: Float32Array) => collector.observeKV(layout.attention, k, v),
            };
            try {
              loadSeconds = await layerOverSamples(model.arch.forward, src, layout, cfg, gemm, hidden, samples.map((s) => s.length), cos, sin, hooks);
              if (cache) {
                // the search reads the inputs kept above; the hidden states have moved on unquantized
                const t0 = Date.now();
                awqStats = await awqSearchLayer(src, layout, cache, options.awq!, gemm, awqWorkspace);
                awqSeconds = (Date.now() - t0) / 1000;
              }
            } finally {
              await cache?.close();
            }
          } else {
            // lm_head sees the final norm's output; it stays unquantized, but its statistics are reported
            // too. Medusa heads read the same state: their linears' inputs are gathered through them.
            const norm = await loadFinalNorm(src, model.arch.names);
            const heads = model.medusa && (await loadMedusa(src, model.medusa.config, cfg.hiddenSize, gemm));
            const layout = model.medusa?.layout;
            const modulesOf = (roles: readonly string[]) => roles.map((r) => layout!.linears[layout!.roles.indexOf(r)]!);
            try {
              for (let i = 0; i < samples.length; i++) {
                const T = samples[i]!.length;
                const x = rmsnorm(await hidden.get(i), T, cfg.hiddenSize, norm, cfg.rmsNormEps);
                collector.observe(model.arch.names.lmHead, x, T, cfg.hiddenSize);
                await heads?.run(x, T, {
                  linearInput: (role, y, n, K) => collector.observeShared(modulesOf([role]), y, n, K),
                  linearInputs: (roles, y, n, K) => collector.observeShared(modulesOf(roles), y, n, K),
                });
              }
            } finally {
              await heads?.release();
            }
            await hidden.close(); // the rest comes last: no layer needs the hidden states any more
            hidden = undefined;
            gemm.dropSpareBuffers?.(); // nor the last layer's weight buffers
          }
          onProgress?.({ layer: unit.layer, tokens, seconds: (Date.now() - started) / 1000, awqSeconds, loadSeconds });
          const stats = collector.result();
          for (const [k, v] of awqStats ?? []) stats.set(k, v);
          return { ...unit, stats: unit.stats ? new Map([...unit.stats, ...stats]) : stats };
        }),
        finalize(() => {
          void hidden?.close();
          void awqWorkspace?.close();
        }),
      );
    });
}
