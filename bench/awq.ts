/**
 * AWQ-lite speed: one Llama-3.1-8B-shaped decoder layer (the calibration section's shapes and random
 * weights, rounded to bf16), 512 tokens, onnxruntime on every core. Side by side in one run: the
 * layer's max calibration (forward pass with the statistics hooks) and the same forward pass keeping
 * the linear inputs followed by the AWQ-lite search of its seven linears for each AWQ format, with
 * the search's time split into building candidates (W·s, fake quantization, transposes, engine
 * setup) and their GEMMs with the losses. Each format's first linears grow the search's buffers
 * (fresh memory), as the first layer of a calibration run does.
 */
import { cpus } from 'node:os';
import { decoderLayer, prepareLayer } from '../src/forward/layer.js';
import { CFG, T, llama8bLayer, rand } from './calibration.js';
import { loadOrt, onnxGemm } from '../src/forward/gemm.js';
import { ropeTables } from '../src/forward/rope.js';
import { StatsCollector } from '../src/calibration/collector.js';
import { AwqInputCache } from '../src/calibration/input-cache.js';
import { AwqWorkspace, awqInputMean, awqLiteSearch } from '../src/calibration/awq.js';
import { FORMATS } from '../src/formats/registry.js';
import { roundToDType } from '../src/codecs/float.js';

export async function benchAwq(): Promise<string[]> {
  const ort = await loadOrt();
  if (!ort) return ['| awq | onnxruntime-node not available |'];
  const H = 4096, d = 128;
  const bf16 = (x: number) => roundToDType(x, 'BF16');
  const lw = llama8bLayer(bf16);
  const { cos, sin } = ropeTables(CFG.rope, d, T);
  const h = rand(T * H, 2, 9, bf16);
  const gemm = onnxGemm(ort, cpus().length);
  const layer = await prepareLayer(lw, gemm);
  const calibrationPass = async (cache?: AwqInputCache) => {
    const c = new StatsCollector();
    const t = performance.now();
    await decoderLayer(h.slice(), T, layer, CFG, cos, sin, {
      linearInput: (role, x, n, K) => {
        c.observe(role, x, n, K);
        cache?.observe(role, x, n, K);
      },
    });
    c.result();
    return (performance.now() - t) / 1000;
  };
  await calibrationPass(); // warm-up
  const maxCal = Math.min(await calibrationPass(), await calibrationPass());
  const rows = [
    `one Llama-3.1-8B-shaped layer, ${T} tokens, onnxruntime on ${cpus().length} threads; max calibration of the layer: ${maxCal.toFixed(2)} s`,
    '',
    '| format | forward keeping inputs | candidates (W·s, fake quant, setup) | candidate GEMMs + losses | total | vs max calibration |',
    '|---|---|---|---|---|---|',
  ];
  const groups = [['q', 'k', 'v'], ['gate', 'up']];
  const same = (a: string, b: string) => groups.some((g) => g.includes(a) && g.includes(b));
  for (const name of ['int4_awq', 'nvfp4_awq', 'w4a8_awq'] as const) {
    const cache = new AwqInputCache(same);
    const workspace = new AwqWorkspace(cpus().length); // as calibrate keeps it: one per run, grown to the largest linear, its threads
    const fwd = await calibrationPass(cache);
    let cand = 0, run = 0;
    for (const role of ['q', 'k', 'v', 'o', 'gate', 'up', 'down'] as const) {
      const l = lw[role];
      const xMean = await awqInputMean(cache.batches(role), l.K);
      const r = await awqLiteSearch({ w: l.w, N: l.N, K: l.K, dtype: 'BF16' }, FORMATS[name], xMean, () => cache.batches(role), gemm, undefined, workspace);
      cand += r.seconds.candidates;
      run += r.seconds.gemm;
    }
    await cache.close();
    await workspace.close();
    const total = fwd + cand + run;
    rows.push(`| ${name} | ${fwd.toFixed(2)} s | ${cand.toFixed(2)} s | ${run.toFixed(2)} s | ${total.toFixed(2)} s | ${(total / maxCal).toFixed(1)}x |`);
  }
  await layer.release();
  return rows;
}
