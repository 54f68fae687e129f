/**
 * Shared by the model-family tests: the token ids of a reference file, the relative error used
 * against transformers' outputs, and the check that a family's forward pass reproduces the hidden
 * states after every layer, the final norm and the logits a reference file holds.
 */
import { expect } from 'vitest';
import { openCheckpoint, loadStats, openModel } from '../src/index.js';
import { jsGemm, loadOrt, onnxGemm, type GemmEngine } from '../src/forward/gemm.js';
import { embed, loadHead, weightSource } from '../src/forward/weights.js';
import { ropeTables } from '../src/forward/rope.js';
import { rmsnorm } from '../src/forward/ops.js';
import { StatsCollector } from '../src/calibration/collector.js';
import type { LayerLayout } from '../src/models/index.js';

/** The `input_ids` [B, T] (I64) of a reference file, as B arrays. */
export async function inputIds(refPath: string): Promise<number[][]> {
  const ck = await openCheckpoint(refPath);
  const t = ck.tensors.get('input_ids')!;
  const all = new BigInt64Array((await t.read()).slice().buffer);
  const [B, T] = t.shape as [number, number];
  await ck.close();
  return Array.from({ length: B }, (_, b) => Array.from(all.subarray(b * T, (b + 1) * T), Number));
}

/** max |a - b| / max |b| */
export function relErr(a: Float32Array, b: Float32Array): number {
  let d = 0, m = 0;
  for (let i = 0; i < b.length; i++) {
    d = Math.max(d, Math.abs(a[i]! - b[i]!));
    m = Math.max(m, Math.abs(b[i]!));
  }
  return d / m;
}

/**
 * Every input_amax / input_absmean statistic of a transformers reference (`ref`) is in `stats`
 * within 1e-4 relative; returns how many were checked (the caller bounds it from below).
 */
export function expectStatsMatchReference(stats: Map<string, Float32Array>, ref: Map<string, Float32Array>): number {
  let checked = 0;
  for (const [k, v] of ref) {
    if (!/\.(input_amax|input_absmean)$/.test(k)) continue;
    expect(stats.get(k), k).toBeDefined();
    expect(relErr(stats.get(k)!, v), k).toBeLessThan(1e-4);
    checked++;
  }
  return checked;
}

export const cat = (arr: Float32Array[]): Float32Array => Float32Array.from(arr.flatMap((a) => Array.from(a)));

/** The family's forward pass on the reference ids: every hidden state, the final norm and the logits within 1e-4 relative. */
export async function checkForwardAgainstReference(dir: string, refPath: string, engine: 'js' | 'onnx'): Promise<void> {
  const ref = await loadStats(refPath);
  const ids = await inputIds(refPath);
  const gemm: GemmEngine = engine === 'js' ? jsGemm : onnxGemm((await loadOrt())!, 1);
  const model = await openModel(dir);
  try {
    const cfg = model.config;
    const src = weightSource(model);
    const T = ids[0]!.length;
    const { cos, sin } = ropeTables(cfg.rope, cfg.headDim, T);
    const h = await Promise.all(ids.map((s) => embed(src, s, cfg.hiddenSize, model.arch.names)));
    expect(relErr(cat(h), ref.get('hidden_states.0')!)).toBeLessThan(1e-6);
    for (let l = 0; l < cfg.numLayers; l++) {
      const layer = await model.arch.forward.load(src, model.layers[l]!, cfg, gemm);
      for (let i = 0; i < h.length; i++) h[i] = await model.arch.forward.run(h[i]!, T, layer, cfg, cos, sin);
      await layer.release();
      if (l < cfg.numLayers - 1) expect(relErr(cat(h), ref.get(`hidden_states.${l + 1}`)!), `layer ${l}`).toBeLessThan(1e-4);
    }
    const { norm, head } = await loadHead(src, cfg, model.arch.names);
    const normed = h.map((x) => rmsnorm(x, T, cfg.hiddenSize, norm, cfg.rmsNormEps));
    expect(relErr(cat(normed), ref.get(`hidden_states.${cfg.numLayers}`)!)).toBeLessThan(1e-4);
    const prepared = await gemm.prepare(head);
    const logits = cat(await Promise.all(normed.map(async (x) => (await prepared.run(x, T)).slice())));
    expect(relErr(logits, ref.get('logits')!)).toBeLessThan(1e-4);
    await prepared.release();
  } finally {
    await model.close();
  }
}

/** Hooks that record a layer's statistics into `c`, modules named by the layout. */
export function collectInto(c: StatsCollector, layout: LayerLayout) {
  return {
    linearInput: (name: string, x: Float32Array, n: number, K: number) => c.observe(layout.observed?.[name] ?? layout.linears[layout.roles.indexOf(name)]!, x, n, K),
    keysValues: (k: Float32Array, v: Float32Array) => c.observeKV(layout.attention, k, v),
  };
}

export interface PartsContext {
  model: Awaited<ReturnType<typeof openModel>>;
  cfg: Awaited<ReturnType<typeof openModel>>['config'];
  src: ReturnType<typeof weightSource>;
  layout: LayerLayout;
  states: { count: number; tokens(i: number): number; get(i: number): Promise<Float32Array>; set(i: number, h: Float32Array): Promise<void> };
  cos: Float32Array;
  sin: Float32Array;
  hooks: ReturnType<typeof collectInto>;
}

/**
 * Runs layer `index` of a model two ways on the reference ids (JavaScript GEMM): whole, sample by
 * sample, and through `parts` (a layer a part at a time over every sample); the hidden states must
 * be the same bits, and every statistic too (`exact(name)` false: within 1e-12, for sums taken in
 * another order).
 */
export async function checkPartsAgainstWholeLayer(dir: string, refPath: string, index: number, parts: (c: PartsContext) => Promise<void>, exact: (stat: string) => boolean = () => true): Promise<void> {
  const ids = await inputIds(refPath);
  const model = await openModel(dir);
  try {
    const cfg = model.config;
    const src = weightSource(model);
    const T = ids[0]!.length;
    const { cos, sin } = ropeTables(cfg.rope, cfg.headDim, T);
    const layout = model.layers[index]!;
    const a = await Promise.all(ids.map((s) => embed(src, s, cfg.hiddenSize, model.arch.names)));
    const ca = new StatsCollector();
    const whole = await model.arch.forward.load(src, layout, cfg, jsGemm);
    for (let i = 0; i < a.length; i++) a[i] = await model.arch.forward.run(a[i]!, T, whole, cfg, cos, sin, collectInto(ca, layout));
    await whole.release();
    const b = await Promise.all(ids.map((s) => embed(src, s, cfg.hiddenSize, model.arch.names)));
    const cb = new StatsCollector();
    const states = { count: b.length, tokens: () => T, get: async (i: number) => b[i]!, set: async (i: number, h: Float32Array) => void (b[i] = h) };
    await parts({ model, cfg, src, layout, states, cos, sin, hooks: collectInto(cb, layout) });
    for (let i = 0; i < a.length; i++) expect(Buffer.compare(Buffer.from(a[i]!.buffer), Buffer.from(b[i]!.buffer)), `sample ${i}`).toBe(0);
    const sa = ca.result(), sb = cb.result();
    expect([...sb.keys()].sort()).toEqual([...sa.keys()].sort());
    for (const [k, v] of sa) {
      if (exact(k)) expect(Buffer.compare(Buffer.from(v.buffer), Buffer.from(sb.get(k)!.buffer)), k).toBe(0);
      else expect(relErr(sb.get(k)!, v), k).toBeLessThan(1e-12);
    }
  } finally {
    await model.close();
  }
}
