/**
 * The AWQ-lite search (spec modelopt-format.md §11.3) against a plain computation written here from
 * the spec's steps, on stories-mini (a real trained BF16 Llama with in_features 128 and 384) over the
 * transformers reference's own hidden states: the loss of every α, α*, and the pre_quant_scale bytes
 * an export stores. The fast path runs inside `calibrate` on its own forward pass and onnxruntime's
 * fused candidate GEMMs; the plain one here uses transformers' hidden states, f64 dot products and
 * one candidate at a time.
 */
import { describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { DATA, readAll } from './helpers.js';
import { exportCheckpoint } from '../src/export-checkpoint.js';
import { packInt4Rows } from '../src/codecs/int4.js';
import { AwqWorkspace, awqInputMean, awqLiteSearch } from '../src/calibration/awq.js';
import { jsGemm } from '../src/forward/gemm.js';
import { inputIds } from './reference-forward.js';
import { loadStats, openModel } from '../src/index.js';
import { calibrateModel, writeStats } from '../src/calibrate-checkpoint.js';
import { FORMATS } from '../src/formats/registry.js';
import { decodeToFloat32 } from '../src/codecs/index.js';
import { roundToDType } from '../src/codecs/float.js';
import { int4Scales, quantizeInt4Ref, dequantizeInt4 } from '../src/formats/int4.js';
import { quantizeNvfp4Ref, dequantizeNvfp4, nvfp4GlobalScale } from '../src/formats/nvfp4.js';

const MINI = join(DATA, 'stories-mini');
const REF = join(MINI, 'reference', 'calib.safetensors');
const TINY = 2 ** -126;
const bf16 = (x: number) => roundToDType(x, 'BF16');

/** The engine's weight for the format, written out from §6.4 / §6.8 with the formats' reference quantizers. */
function fakeQuantPlain(fmt: 'int4_awq' | 'nvfp4_awq', w: Float32Array, N: number, K: number): Float32Array {
  if (fmt === 'int4_awq') {
    const s = int4Scales(w, N, K);
    return dequantizeInt4(quantizeInt4Ref(w, N, K, s), N, K, s);
  }
  let amax = 0;
  for (const v of w) amax = Math.max(amax, Math.abs(v));
  const ws2 = nvfp4GlobalScale(amax);
  const { codes, scales } = quantizeNvfp4Ref(w, N, K, ws2);
  return dequantizeNvfp4(codes, scales, N, K, ws2);
}

/** §11.3 step by step for one linear: returns loss per α, α* (index) and 1/s*. */
function awqLitePlain(fmt: 'int4_awq' | 'nvfp4_awq', w: Float32Array, N: number, K: number, xs: Float32Array[], T: number) {
  const G = fmt === 'int4_awq' ? 128 : 16;
  // 1. weight statistic: |W| over its group max (+ tiny), mean over rows
  const wMean = new Float32Array(K);
  for (let k = 0; k < K; k++) {
    let acc = 0;
    for (let n = 0; n < N; n++) {
      const g0 = Math.floor(k / G) * G;
      let m = 0;
      for (let j = g0; j < g0 + G; j++) m = Math.max(m, Math.abs(w[n * K + j]!));
      acc += Math.fround(Math.abs(w[n * K + k]!) / Math.fround(m + TINY));
    }
    wMean[k] = acc / N;
  }
  // 2. activation statistic: mean |x| per channel of each batch, then the mean over batches
  const xMean = new Float32Array(K);
  for (let k = 0; k < K; k++) {
    let acc = 0;
    for (const x of xs) {
      let s = 0;
      for (let t = 0; t < T; t++) s += Math.abs(x[t * K + k]!);
      acc += Math.fround(s / T);
    }
    xMean[k] = acc / xs.length;
  }
  const scaleFor = (alpha: number) => {
    const s = new Float32Array(K);
    for (let k = 0; k < K; k++) {
      const v = Math.fround(Math.fround(Math.pow(xMean[k]!, Math.fround(alpha))) / Math.fround(Math.fround(Math.pow(wMean[k]!, Math.fround(1 - alpha))) + TINY));
      s[k] = Math.min(1e4, Math.max(1e-4, v));
    }
    let mx = -Infinity, mn = Infinity;
    for (const v of s) (mx = Math.max(mx, v)), (mn = Math.min(mn, v));
    const d = Math.fround(Math.sqrt(Math.fround(mx * mn)));
    return s.map((v) => Math.fround(v / d));
  };
  // 3. the grid: quantized output of (x · dtype(1/s)) against dtype(W · dtype(s)), loss against x · W^T
  const alphas = Array.from({ length: 11 }, (_, i) => i * 0.1);
  const loss = alphas.map((alpha) => {
    const s = scaleFor(alpha);
    const ws = new Float32Array(N * K);
    for (let n = 0; n < N; n++) for (let k = 0; k < K; k++) ws[n * K + k] = bf16(w[n * K + k]! * bf16(s[k]!));
    const q = fakeQuantPlain(fmt, ws, N, K);
    let total = 0;
    for (const x of xs) {
      let sum = 0;
      for (let t = 0; t < T; t++)
        for (let n = 0; n < N; n++) {
          let yq = 0, yr = 0;
          for (let k = 0; k < K; k++) {
            yq += x[t * K + k]! * bf16(1 / s[k]!) * q[n * K + k]!;
            yr += x[t * K + k]! * w[n * K + k]!;
          }
          sum += (yq - yr) ** 2;
        }
      total += sum / (T * N);
    }
    return total;
  });
  // 4. the first α of least loss; pre_quant_scale = 1/s*
  let best = 0;
  loss.forEach((l, i) => void (l < loss[best]! && (best = i)));
  return { loss, best, pqs: scaleFor(alphas[best]!).map((v) => Math.fround(1 / v)) };
}

/** RMSNorm as transformers' LlamaRMSNorm: f32 variance, x · rsqrt(var + eps), times the weight. */
function rmsnormPlain(h: Float32Array, T: number, H: number, g: Float32Array, eps: number): Float32Array {
  const out = new Float32Array(T * H);
  for (let t = 0; t < T; t++) {
    let ss = 0;
    for (let i = 0; i < H; i++) ss += h[t * H + i]! ** 2;
    const r = 1 / Math.sqrt(Math.fround(ss / H) + eps);
    for (let i = 0; i < H; i++) out[t * H + i] = Math.fround(g[i]! * Math.fround(h[t * H + i]! * r));
  }
  return out;
}

describe('AWQ-lite search', () => {
  for (const fmt of ['int4_awq', 'nvfp4_awq'] as const) {
    it(`${fmt}: loss per α, α* and pre_quant_scale of layer 0 and 1 q/k/v match a plain computation from the spec`, async () => {
      const ids = (await inputIds(REF)).slice(0, 4);
      const T = ids[0]!.length;
      const stats = await calibrateModel(join(MINI, 'hf'), ids, { awq: { format: FORMATS[fmt], algorithm: 'lite' } });
      const ref = await loadStats(REF);
      const model = await openModel(join(MINI, 'hf'));
      try {
        const H = model.config.hiddenSize;
        for (const layer of [0, 1]) {
          const hidden = ref.get(`hidden_states.${layer}`)!; // [16, T, H], the layer's input in transformers
          const norm = decodeToFloat32(await model.tensors.get(`model.layers.${layer}.input_layernorm.weight`)!.read(), 'BF16');
          const xs = ids.map((_, b) => rmsnormPlain(hidden.subarray(b * T * H, (b + 1) * T * H), T, H, norm, model.config.rmsNormEps));
          for (const p of ['q_proj', 'k_proj', 'v_proj']) {
            const m = `model.layers.${layer}.self_attn.${p}`;
            const t = model.tensors.get(`${m}.weight`)!;
            const [N, K] = t.shape as [number, number];
            const plain = awqLitePlain(fmt, decodeToFloat32(await t.read(), 'BF16'), N, K, xs, T);
            const loss = stats.get(`${m}.awq_loss`)!;
            for (let i = 0; i < 11; i++) expect(Math.abs(loss[i]! - plain.loss[i]!) / plain.loss[i]!, `${m} loss[${i}]`).toBeLessThan(1e-5);
            expect(stats.get(`${m}.awq_alpha`)![0], m).toBeCloseTo(plain.best * 0.1, 6);
            // the bytes the export stores: pre_quant_scale in the weight dtype
            const got = Array.from(stats.get(`${m}.pre_quant_scale`)!, bf16);
            expect(got, m).toEqual(Array.from(plain.pqs, bf16));
          }
        }
        // the search is not degenerate on this model: some linear prefers a non-zero α
        const alphas = [...stats].filter(([k]) => k.endsWith('.awq_alpha')).map(([, v]) => v[0]!);
        expect(alphas.length).toBe(28);
        expect(alphas.some((a) => a > 0)).toBe(true);
      } finally {
        await model.close();
      }
    }, 120_000);
  }
});

describe('AWQ-clip search', () => {
  const CLIP = [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1];
  // layer 0's q/k/v input: input_layernorm of the embeddings, from transformers' hidden_states.0
  async function layer0Inputs(n: number) {
    const ids = (await inputIds(REF)).slice(0, n);
    const T = ids[0]!.length;
    const ref = await loadStats(REF);
    const model = await openModel(join(MINI, 'hf'));
    const H = model.config.hiddenSize;
    const norm = decodeToFloat32(await model.tensors.get('model.layers.0.input_layernorm.weight')!.read(), 'BF16');
    const hidden = ref.get('hidden_states.0')!;
    const xs = ids.map((_, b) => rmsnormPlain(hidden.subarray(b * T * H, (b + 1) * T * H), T, H, norm, model.config.rmsNormEps));
    const t = model.tensors.get('model.layers.0.self_attn.q_proj.weight')!;
    const [N, K] = t.shape as [number, number];
    const w = decodeToFloat32(await t.read(), 'BF16');
    await model.close();
    return { ids, T, xs, w, N, K };
  }

  it('int4_awq, --awq clip: each (row, group) ratio is one of least block-output error in a plain computation of §11.4', async () => {
    const { ids, T, xs, w, N, K } = await layer0Inputs(2);
    const stats = await calibrateModel(join(MINI, 'hf'), ids, { awq: { format: FORMATS.int4_awq, algorithm: 'clip' } });
    const got = stats.get('model.layers.0.self_attn.q_proj.awq_clip_ratios')!;
    expect(got.length).toBe((N * K) / 128);
    expect(stats.has('model.layers.0.self_attn.q_proj.pre_quant_scale')).toBe(false); // clip alone: no smoothing
    // at most 64 tokens per batch, every ceil(T/64)-th
    const stride = Math.ceil(T / 64);
    const err = CLIP.map((r) => {
      const scales = new Float32Array((N * K) / 128);
      for (let b = 0; b < scales.length; b++) {
        let m = 0;
        for (let i = 0; i < 128; i++) m = Math.max(m, Math.abs(w[b * 128 + i]!));
        scales[b] = m === 0 ? 1 : Math.fround(Math.fround(m * Math.fround(r)) / 7);
      }
      const q = dequantizeInt4(quantizeInt4Ref(w, N, K, scales), N, K, scales);
      const e = new Float64Array((N * K) / 128);
      for (const x of xs) {
        let count = 0;
        const acc = new Float64Array(e.length);
        for (let t = 0; t < T; t += stride) {
          count++;
          for (let b = 0; b < e.length; b++) {
            const n = Math.floor(b / (K / 128)), g = b % (K / 128);
            let dot = 0;
            for (let k = g * 128; k < (g + 1) * 128; k++) dot += x[t * K + k]! * (q[n * K + k]! - w[n * K + k]!);
            acc[b] += dot * dot;
          }
        }
        for (let b = 0; b < e.length; b++) e[b] += acc[b]! / count;
      }
      return e;
    });
    let nonTrivial = 0;
    for (let b = 0; b < got.length; b++) {
      const min = Math.min(...err.map((e) => e[b]!));
      const chosen = err[CLIP.findIndex((r) => Math.fround(r) === got[b])]![b]!;
      expect(chosen, `block ${b}`).toBeLessThanOrEqual(min * (1 + 1e-6) + 1e-30);
      if (got[b] !== 1) nonTrivial++;
    }
    expect(nonTrivial).toBeGreaterThan(0);
  }, 120_000);

  it('nvfp4_awq, --awq clip: the global ratio is the least-loss one of a plain computation of §11.4', async () => {
    const { ids, T, xs, w, N, K } = await layer0Inputs(2);
    const stats = await calibrateModel(join(MINI, 'hf'), ids, { awq: { format: FORMATS.nvfp4_awq, algorithm: 'clip' } });
    let amax = 0;
    for (const v of w) amax = Math.max(amax, Math.abs(v));
    const loss = CLIP.map((r) => {
      const ws2 = nvfp4GlobalScale(Math.fround(amax * Math.fround(r)));
      const { codes, scales } = quantizeNvfp4Ref(w, N, K, ws2);
      const q = dequantizeNvfp4(codes, scales, N, K, ws2);
      let total = 0;
      for (const x of xs) {
        let sum = 0;
        for (let t = 0; t < T; t++)
          for (let n = 0; n < N; n++) {
            let d = 0;
            for (let k = 0; k < K; k++) d += x[t * K + k]! * (q[n * K + k]! - w[n * K + k]!);
            sum += d * d;
          }
        total += sum / (T * N);
      }
      return total;
    });
    let best = 0;
    loss.forEach((l, i) => void (l < loss[best]! && (best = i)));
    expect(stats.get('model.layers.0.self_attn.q_proj.awq_clip_ratio')![0]).toBe(Math.fround(CLIP[best]!));
  }, 120_000);
});

describe('export with AWQ-clip results', () => {
  const G = 128;
  const f32At = (b: Uint8Array) => new DataView(b.buffer, b.byteOffset).getFloat32(0, true);
  it('int4_awq: clipped group scales (amax x ratio / 7) where the weight is not re-smoothed, ignored where it is', async () => {
    const tmp = await mkdtemp(join(tmpdir(), 'rxq-clip-'));
    try {
      const model = await openModel(join(MINI, 'hf'));
      const o = 'model.layers.0.self_attn.o_proj', q = 'model.layers.0.self_attn.q_proj';
      const [N, K] = model.tensors.get(`${o}.weight`)!.shape as [number, number];
      const w = decodeToFloat32(await model.tensors.get(`${o}.weight`)!.read(), 'BF16');
      await model.close();
      const ratios = Float32Array.from({ length: (N * K) / G }, (_, i) => Math.fround(0.5 + 0.05 * (i % 11 === 10 ? 10 : i % 10)) || 1);
      // q/k/v get different pre_quant_scales: they are re-smoothed to their mean, which discards q's clip
      const pqs = (c: number) => Float32Array.from({ length: K }, (_, k) => 1 + ((k * c) % 7) / 10);
      const base = new Map([[`${q}.pre_quant_scale`, pqs(1)], ['model.layers.0.self_attn.k_proj.pre_quant_scale', pqs(2)], ['model.layers.0.self_attn.v_proj.pre_quant_scale', pqs(3)]]);
      const clipped = new Map([...base, [`${o}.awq_clip_ratios`, ratios], [`${q}.awq_clip_ratios`, ratios]]);
      await exportCheckpoint({ model: join(MINI, 'hf'), format: 'int4_awq', out: join(tmp, 'a'), stats: clipped, workers: 2 });
      await exportCheckpoint({ model: join(MINI, 'hf'), format: 'int4_awq', out: join(tmp, 'b'), stats: base, workers: 2 });
      const a = await readAll(join(tmp, 'a', 'model.safetensors')), b = await readAll(join(tmp, 'b', 'model.safetensors'));
      // o_proj: scales from the clipped amax, codes as the reference quantizer gives them with those scales
      const scales = new Float32Array((N * K) / G);
      for (let i = 0; i < scales.length; i++) {
        let m = 0;
        for (let k = 0; k < G; k++) m = Math.max(m, Math.abs(w[i * G + k]!));
        scales[i] = m === 0 ? 1 : Math.fround(Math.fround(m * ratios[i]!) / 7);
      }
      expect(new Float32Array(a.get(`${o}.weight_scale`)!.bytes.slice().buffer)).toEqual(scales);
      expect(Buffer.from(a.get(`${o}.weight`)!.bytes).equals(Buffer.from(packInt4Rows(quantizeInt4Ref(w, N, K, scales), N, K)))).toBe(true);
      expect(Buffer.from(a.get(`${o}.weight_scale`)!.bytes).equals(Buffer.from(b.get(`${o}.weight_scale`)!.bytes))).toBe(false);
      // q_proj: the same bytes as without its clip
      for (const t of ['weight', 'weight_scale']) expect(Buffer.from(a.get(`${q}.${t}`)!.bytes).equals(Buffer.from(b.get(`${q}.${t}`)!.bytes)), t).toBe(true);
    } finally {
      await rm(tmp, { recursive: true, force: true });
    }
  }, 120_000);

  it('nvfp4_awq: weight_scale_2 from the clipped global amax', async () => {
    const tmp = await mkdtemp(join(tmpdir(), 'rxq-clip-'));
    try {
      const ids = (await inputIds(REF)).slice(0, 1);
      const stats = await calibrateModel(join(MINI, 'hf'), ids);
      const o = 'model.layers.1.mlp.down_proj';
      stats.set(`${o}.awq_clip_ratio`, Float32Array.of(Math.fround(0.8)));
      await exportCheckpoint({ model: join(MINI, 'hf'), format: 'nvfp4_awq', out: join(tmp, 'a'), stats, workers: 0 });
      const model = await openModel(join(MINI, 'hf'));
      const w = decodeToFloat32(await model.tensors.get(`${o}.weight`)!.read(), 'BF16');
      await model.close();
      let amax = 0;
      for (const v of w) amax = Math.max(amax, Math.abs(v));
      const a = await readAll(join(tmp, 'a', 'model.safetensors'));
      expect(f32At(a.get(`${o}.weight_scale_2`)!.bytes)).toBe(Math.fround(Math.fround(amax * Math.fround(0.8)) / 2688));
    } finally {
      await rm(tmp, { recursive: true, force: true });
    }
  }, 120_000);
});

describe('AWQ through a statistics file', () => {
  it('calibrate -f int4_awq --awq full, then quantize --stats, writes the bytes of the inline export', async () => {
    const tmp = await mkdtemp(join(tmpdir(), 'rxq-awqstats-'));
    try {
      const samples = (await inputIds(REF)).slice(0, 3).map((a) => a.slice(0, 128));
      const model = join(MINI, 'hf');
      const stats = await calibrateModel(model, samples, { awq: { format: 'int4_awq', algorithm: 'full' } });
      expect([...stats.keys()].some((k) => k.endsWith('.awq_clip_ratios'))).toBe(true);
      await writeStats(join(tmp, 'stats.safetensors'), stats);
      await exportCheckpoint({ model, format: 'int4_awq', out: join(tmp, 'from-stats'), stats: await loadStats(join(tmp, 'stats.safetensors')), workers: 0 });
      await exportCheckpoint({ model, format: 'int4_awq', out: join(tmp, 'inline'), calibration: samples, awq: 'full', workers: 0 });
      const a = await readFile(join(tmp, 'from-stats', 'model.safetensors')), b = await readFile(join(tmp, 'inline', 'model.safetensors'));
      expect(a.equals(b)).toBe(true);
    } finally {
      await rm(tmp, { recursive: true, force: true });
    }
  }, 120_000);
});

describe('AWQ candidates built on worker threads', () => {
  it('give the same losses, bit for bit, as on this thread (bands of rows, amax combined by max)', async () => {
    const N = 320, K = 256, T = 48;
    let seed = 3;
    const rnd = () => ((seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0) / 2 ** 32 - 0.5);
    const w = Float32Array.from({ length: N * K }, () => bf16(rnd() * 0.1));
    const x = Float32Array.from({ length: T * K }, () => rnd() * 4);
    const batches = async function* () {
      yield { x, T };
    };
    const xMean = await awqInputMean(batches(), K);
    for (const fmt of ['int4_awq', 'nvfp4_awq'] as const) {
      const alone = new AwqWorkspace(0), threads = new AwqWorkspace(2);
      try {
        const a = await awqLiteSearch({ w, N, K, dtype: 'BF16' }, FORMATS[fmt], xMean, batches, jsGemm, undefined, alone);
        const b = await awqLiteSearch({ w, N, K, dtype: 'BF16' }, FORMATS[fmt], xMean, batches, jsGemm, undefined, threads);
        expect(threads.pool(), 'the worker is built').toBeDefined();
        expect(Array.from(b.loss)).toEqual(Array.from(a.loss));
        expect(b.best).toBe(a.best);
      } finally {
        await alone.close();
        await threads.close();
      }
    }
  }, 60_000);
});

describe('AWQ fake quantization', () => {
  // the in-place versions the search uses, against each format's reference quantizer and dequantizer
  const N = 6, K = 256;
  const w = new Float32Array(N * K);
  let seed = 7;
  for (let i = 0; i < w.length; i++) {
    seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0;
    w[i] = bf16(((seed / 2 ** 32 - 0.5) * 2) ** 3); // heavy-tailed bf16 values, with ties and zeros
  }
  w.fill(0, 128, 256); // an all-zero group
  w[300] = -1e-9; // a negative that rounds to zero
  let amax = 0;
  for (const v of w) amax = Math.max(amax, Math.abs(v));
  const dequantizeStored = (fmt: 'int4_awq' | 'w4a8_awq', q: Int8Array, s: Float32Array) => {
    const rows = new Uint8Array((N / 2) * K);
    for (let i = 0; i < N / 2; i++) for (let k = 0; k < K; k++) rows[i * K + k] = (q[2 * i * K + k]! & 0xf) | ((q[(2 * i + 1) * K + k]! & 0xf) << 4);
    const ws2 = fmt === 'w4a8_awq' ? Math.fround(amax / 448) : undefined;
    return FORMATS[fmt].dequantize(rows, [N / 2, K], new Uint8Array(s.buffer), ws2).w;
  };
  for (const fmt of ['int4_awq', 'w4a8_awq', 'nvfp4_awq'] as const) {
    it(`${fmt}: equal to quantize-then-dequantize with the reference quantizer, also row by row`, () => {
      let expected: Float32Array;
      if (fmt === 'nvfp4_awq') {
        const ws2 = nvfp4GlobalScale(amax);
        const { codes, scales } = quantizeNvfp4Ref(w, N, K, ws2);
        expected = dequantizeNvfp4(codes, scales, N, K, ws2);
      } else {
        const s = int4Scales(w, N, K);
        expected = dequantizeStored(fmt, quantizeInt4Ref(w, N, K, s), s);
      }
      const whole = FORMATS[fmt].fakeQuantize!(w, N, K);
      const byRows = w.slice();
      for (let r = 0; r < N; r += 2) FORMATS[fmt].fakeQuantizeInPlace!(byRows.subarray(r * K, (r + 2) * K), 2, K, amax);
      for (let i = 0; i < w.length; i++) {
        expect(whole[i] === expected[i], `${fmt} [${i}]: ${whole[i]} vs ${expected[i]}`).toBe(true); // -0 and +0 count as equal
        expect(byRows[i] === expected[i], `${fmt} rows [${i}]`).toBe(true);
      }
    });
  }
});
