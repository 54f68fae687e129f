/**
 * DeepSeek V3 (`deepseek_v3`) against transformers' reference outputs (MLA with q/kv LoRA, interleaved
 * RoPE, a dense first layer, group-limited sigmoid routing with e_score_correction_bias, a shared
 * expert): hidden states, logits and every recorded statistic; the NVFP4 export of ModelOpt's
 * DeepSeek recipe (families.md §6.4) byte for byte against the spec's formulas.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openCheckpoint, loadStats, openModel, exportCheckpoint, verifyExport, type Stats } from '../src/index.js';
import { calibrateModel } from '../src/calibrate-checkpoint.js';
import { jsGemm, loadOrt, onnxGemm, type GemmEngine } from '../src/forward/gemm.js';
import { embed, loadHead, weightSource } from '../src/forward/weights.js';
import { ropeTables } from '../src/forward/rope.js';
import { rmsnorm } from '../src/forward/ops.js';
import { quantizeNvfp4Ref } from '../src/formats/nvfp4.js';
import { packNibblesK } from '../src/codecs/e2m1.js';
import { StatsCollector } from '../src/calibration/collector.js';
import { deepseekDenseOverSamples, deepseekLayerOverSamples, type DeepseekLayerNames } from '../src/forward/deepseek.js';
import { synthetic } from './helpers.js';

const dir = synthetic('deepseek_v3');
const refPath = join(dir, 'reference.safetensors');
let tmp: string;
let ids: number[][];
beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'rxq-deepseek-'));
  const ck = await openCheckpoint(refPath);
  const t = ck.tensors.get('input_ids')!;
  const all = new BigInt64Array((await t.read()).slice().buffer);
  const [B, T] = t.shape as [number, number];
  await ck.close();
  ids = Array.from({ length: B }, (_, b) => Array.from(all.subarray(b * T, (b + 1) * T), Number));
});
afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});

function relErr(a: Float32Array, b: Float32Array): number {
  let d = 0, m = 0;
  for (let i = 0; i < b.length; i++) {
    d = Math.max(d, Math.abs(a[i]! - b[i]!));
    m = Math.max(m, Math.abs(b[i]!));
  }
  return d / m;
}
const cat = (arr: Float32Array[]) => Float32Array.from(arr.flatMap((a) => Array.from(a)));
const amaxOf = (w: Float32Array) => w.reduce((m, x) => Math.max(m, Math.abs(x)), 0);

describe('deepseek_v3: forward pass vs transformers', () => {
  for (const engine of ['js', 'onnx'] as const) {
    it(`hidden states, final norm and logits within 1e-4 relative, ${engine} GEMM`, async () => {
      const ref = await loadStats(refPath);
      const gemm: GemmEngine = engine === 'js' ? jsGemm : onnxGemm((await loadOrt())!, 1);
      const model = await openModel(dir);
      const cfg = model.config;
      const src = weightSource(model.checkpoint);
      const T = ids[0]!.length;
      const { cos, sin } = ropeTables(cfg.rope, cfg.headDim, T);
      const h = await Promise.all(ids.map((s) => embed(src, s, cfg.hiddenSize, model.arch.names)));
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
      await model.close();
    });
  }
});


describe('deepseek_v3: a MoE layer over all samples, routed experts a group at a time', () => {
  it('gives the same hidden states and statistics, bit for bit, as the whole layer on each sample', async () => {
    const model = await openModel(dir);
    const cfg = model.config;
    const src = weightSource(model.checkpoint);
    const T = ids[0]!.length;
    const { cos, sin } = ropeTables(cfg.rope, cfg.headDim, T);
    const layout = model.layers[1]!;
    const hooksOf = (c: StatsCollector) => ({
      linearInput: (name: string, x: Float32Array, n: number, K: number) => c.observe(layout.observed?.[name] ?? layout.linears[layout.roles.indexOf(name)]!, x, n, K),
    });
    const a = await Promise.all(ids.map((s) => embed(src, s, cfg.hiddenSize, model.arch.names)));
    const ca = new StatsCollector();
    const whole = await model.arch.forward.load(src, layout, cfg, jsGemm);
    for (let i = 0; i < a.length; i++) a[i] = await model.arch.forward.run(a[i]!, T, whole, cfg, cos, sin, hooksOf(ca));
    await whole.release();
    const b = await Promise.all(ids.map((s) => embed(src, s, cfg.hiddenSize, model.arch.names)));
    const cb = new StatsCollector();
    const role = (r: string) => layout.linears[layout.roles.indexOf(r)]!;
    const a0 = layout.attention;
    const names: DeepseekLayerNames = {
      qA: role('q_a'), qANorm: `${a0}.q_a_layernorm.weight`, qB: role('q_b'), kvA: role('kv_a'), kvANorm: `${a0}.kv_a_layernorm.weight`, kvB: role('kv_b'), o: role('o'),
      inputNorm: `${layout.prefix}.input_layernorm.weight`, postNorm: `${layout.prefix}.post_attention_layernorm.weight`,
      mlp: {
        kind: 'moe', router: layout.observed!.router!, bias: `${layout.observed!.router!}.e_score_correction_bias`,
        experts: Array.from({ length: 8 }, (_, e) => ({ gate: role(`e${e}.gate`), up: role(`e${e}.up`), down: role(`e${e}.down`) })),
        shared: { gate: role('shared.gate'), up: role('shared.up'), down: role('shared.down') },
      },
    };
    const states = { count: b.length, tokens: () => T, get: async (i: number) => b[i]!, set: async (i: number, h: Float32Array) => void (b[i] = h) };
    const ds = cfg.deepseek!;
    await deepseekLayerOverSamples(src, names, cfg, ds, jsGemm, states, cos, sin, hooksOf(cb), 3 * ds.moeIntermediateSize * cfg.hiddenSize * 4);
    for (let i = 0; i < a.length; i++) expect(Buffer.compare(Buffer.from(a[i]!.buffer), Buffer.from(b[i]!.buffer)), `sample ${i}`).toBe(0);
    const sa = ca.result(), sb = cb.result();
    expect([...sb.keys()].sort()).toEqual([...sa.keys()].sort());
    for (const [k, v] of sa) expect(Buffer.compare(Buffer.from(v.buffer), Buffer.from(sb.get(k)!.buffer)), k).toBe(0);
    await model.close();
  });
});


describe('deepseek_v3: a dense layer over all samples, its MLP in bands of intermediate rows', () => {
  it('gives the same hidden states and statistics, bit for bit (JavaScript GEMM), as the whole layer on each sample', async () => {
    const model = await openModel(dir);
    const cfg = model.config;
    const src = weightSource(model.checkpoint);
    const T = ids[0]!.length;
    const { cos, sin } = ropeTables(cfg.rope, cfg.headDim, T);
    const layout = model.layers[0]!;
    const hooksOf = (c: StatsCollector) => ({
      linearInput: (name: string, x: Float32Array, n: number, K: number) => c.observe(layout.linears[layout.roles.indexOf(name)]!, x, n, K),
    });
    const a = await Promise.all(ids.map((s) => embed(src, s, cfg.hiddenSize, model.arch.names)));
    const ca = new StatsCollector();
    const whole = await model.arch.forward.load(src, layout, cfg, jsGemm);
    for (let i = 0; i < a.length; i++) a[i] = await model.arch.forward.run(a[i]!, T, whole, cfg, cos, sin, hooksOf(ca));
    await whole.release();
    const b = await Promise.all(ids.map((s) => embed(src, s, cfg.hiddenSize, model.arch.names)));
    const cb = new StatsCollector();
    const role = (r: string) => layout.linears[layout.roles.indexOf(r)]!;
    const a0 = layout.attention;
    const names: DeepseekLayerNames = {
      qA: role('q_a'), qANorm: `${a0}.q_a_layernorm.weight`, qB: role('q_b'), kvA: role('kv_a'), kvANorm: `${a0}.kv_a_layernorm.weight`, kvB: role('kv_b'), o: role('o'),
      inputNorm: `${layout.prefix}.input_layernorm.weight`, postNorm: `${layout.prefix}.post_attention_layernorm.weight`,
      mlp: { kind: 'dense', gate: role('gate'), up: role('up'), down: role('down') },
    };
    const states = { count: b.length, tokens: () => T, get: async (i: number) => b[i]!, set: async (i: number, h: Float32Array) => void (b[i] = h) };
    // bands of 40 rows of the 256-wide MLP (the last one ragged)
    await deepseekDenseOverSamples(src, names, cfg, cfg.deepseek!, jsGemm, states, cos, sin, hooksOf(cb), 2 * 40 * cfg.hiddenSize * 4);
    for (let i = 0; i < a.length; i++) expect(Buffer.compare(Buffer.from(a[i]!.buffer), Buffer.from(b[i]!.buffer)), `sample ${i}`).toBe(0);
    const sa = ca.result(), sb = cb.result();
    expect([...sb.keys()].sort()).toEqual([...sa.keys()].sort());
    for (const [k, v] of sa) expect(Buffer.compare(Buffer.from(v.buffer), Buffer.from(sb.get(k)!.buffer)), k).toBe(0);
    await model.close();
  });
});

describe('deepseek_v3: calibration and the NVFP4 recipe', () => {
  let stats: Stats;
  beforeAll(async () => {
    stats = await calibrateModel(dir, ids);
  });

  it('every statistic transformers recorded within 1e-4; one per routed expert linear', async () => {
    const ref = await loadStats(refPath);
    let checked = 0;
    for (const [k, v] of ref) {
      if (!/\.(input_amax|input_absmean)$/.test(k)) continue;
      expect(stats.get(k), k).toBeDefined();
      expect(relErr(stats.get(k)!, v), k).toBeLessThan(1e-4);
      checked++;
    }
    expect(checked).toBeGreaterThanOrEqual(30);
    for (let e = 0; e < 8; e++) for (const p of ['gate_proj', 'up_proj', 'down_proj']) expect(stats.get(`model.layers.1.mlp.experts.${e}.${p}.input_amax`), `${e} ${p}`).toBeDefined();
  });

  it('nvfp4: experts, shared expert, dense MLP and o_proj quantized by the formulas; MLA projections kept and listed; verify passes', async () => {
    const out = join(tmp, 'ds-nvfp4');
    await exportCheckpoint({ model: dir, format: 'nvfp4', out, stats, workers: 0 });
    const hq = JSON.parse(await readFile(join(out, 'hf_quant_config.json'), 'utf8'));
    const mla = (l: number) => ['kv_a_proj_with_mqa', 'kv_b_proj', 'q_a_proj', 'q_b_proj'].map((p) => `model.layers.${l}.self_attn.${p}`);
    expect(hq.quantization.exclude_modules).toEqual(['lm_head', ...mla(0), ...mla(1)]);
    expect((await verifyExport(out)).failures).toEqual([]);
    const src = await openCheckpoint(dir);
    const ex = await openCheckpoint(out);
    const scalar = async (n: string) => (await ex.tensors.get(n)!.toFloat32())[0]!;
    const check = async (m: string, amax: number, inAmax: number) => {
      const w = await src.tensors.get(`${m}.weight`)!.toFloat32();
      const [N, K] = src.tensors.get(`${m}.weight`)!.shape as [number, number];
      const ws2 = Math.fround(amax / 2688);
      expect(await scalar(`${m}.weight_scale_2`), m).toBe(ws2);
      expect(await scalar(`${m}.input_scale`), m).toBe(Math.fround(inAmax / 2688));
      const q = quantizeNvfp4Ref(w, N, K, ws2);
      expect(Buffer.compare(await ex.tensors.get(`${m}.weight`)!.read(), packNibblesK(q.codes)), m).toBe(0);
      expect(Buffer.compare(await ex.tensors.get(`${m}.weight_scale`)!.read(), q.scales), m).toBe(0);
    };
    const wAmax = async (m: string) => amaxOf(await src.tensors.get(`${m}.weight`)!.toFloat32());
    const inA = (m: string) => stats.get(`${m}.input_amax`)![0]!;
    // layer 0: dense MLP, gate and up fused
    const d0 = 'model.layers.0.mlp';
    const gu0 = Math.max(await wAmax(`${d0}.gate_proj`), await wAmax(`${d0}.up_proj`));
    await check(`${d0}.gate_proj`, gu0, Math.max(inA(`${d0}.gate_proj`), inA(`${d0}.up_proj`)));
    await check(`${d0}.down_proj`, await wAmax(`${d0}.down_proj`), inA(`${d0}.down_proj`));
    // layer 1: routed experts (gate/up share ws2; one input scale per projection type), shared expert
    const b = 'model.layers.1.mlp.experts';
    const guIn = Math.max(...Array.from({ length: 8 }, (_, e) => [inA(`${b}.${e}.gate_proj`), inA(`${b}.${e}.up_proj`)]).flat());
    const dIn = Math.max(...Array.from({ length: 8 }, (_, e) => inA(`${b}.${e}.down_proj`)));
    for (let e = 0; e < 8; e++) {
      const gu = Math.max(await wAmax(`${b}.${e}.gate_proj`), await wAmax(`${b}.${e}.up_proj`));
      await check(`${b}.${e}.gate_proj`, gu, guIn);
      await check(`${b}.${e}.up_proj`, gu, guIn);
      await check(`${b}.${e}.down_proj`, await wAmax(`${b}.${e}.down_proj`), dIn);
    }
    for (const l of [0, 1]) {
      const o = `model.layers.${l}.self_attn.o_proj`;
      await check(o, await wAmax(o), inA(o));
      for (const m of mla(l)) expect(Buffer.compare(await ex.tensors.get(`${m}.weight`)!.read(), await src.tensors.get(`${m}.weight`)!.read()), m).toBe(0);
    }
    // the router and its bias are copied unchanged
    for (const n of ['model.layers.1.mlp.gate.weight', 'model.layers.1.mlp.gate.e_score_correction_bias']) expect(Buffer.compare(await ex.tensors.get(n)!.read(), await src.tensors.get(n)!.read()), n).toBe(0);
    await src.close();
    await ex.close();
  });

  it('formats other than the recipe\'s nvfp4 are refused with the reason', async () => {
    await expect(exportCheckpoint({ model: dir, format: 'fp8', out: join(tmp, 'x'), stats, workers: 0 })).rejects.toThrow(/format fp8 is not available for DeepSeek V3: its recipe defines nvfp4/);
  });
});

describe('deepseek_v3 from its FP8-block source (the official layout) to NVFP4', () => {
  const fp8 = synthetic('deepseek_v3_fp8');
  it('weights dequantized as the fixture golden says, quantized by the formulas from them; MTP layer dequantized, kept and excluded; no scale_inv; the FP8 config replaced', async () => {
    const stats = await calibrateModel(fp8, ids);
    const out = join(tmp, 'dsfp8-nvfp4');
    await exportCheckpoint({ model: fp8, format: 'nvfp4', out, stats, workers: 0 });
    // the FP8 codes are expanded in the kernel workers when there are some: the same bytes
    await exportCheckpoint({ model: fp8, format: 'nvfp4', out: `${out}-w2`, stats, workers: 2 });
    expect(Buffer.compare(await readFile(join(out, 'model.safetensors')), await readFile(join(`${out}-w2`, 'model.safetensors')))).toBe(0);
    const hq = JSON.parse(await readFile(join(out, 'hf_quant_config.json'), 'utf8'));
    const mla = (l: number) => ['kv_a_proj_with_mqa', 'kv_b_proj', 'q_a_proj', 'q_b_proj'].map((p) => `model.layers.${l}.self_attn.${p}`);
    // families.md §1.5, the examples/deepseek row: the MTP layer's pattern after the sorted list
    expect(hq.quantization.exclude_modules).toEqual(['lm_head', ...mla(0), ...mla(1), 'model.layers.2*']);
    const cfg = JSON.parse(await readFile(join(out, 'config.json'), 'utf8'));
    expect(cfg.quantization_config.quant_method).toBe('modelopt');
    expect(cfg.quantization_config.weight_block_size).toBeUndefined();
    expect((await verifyExport(out)).failures).toEqual([]);

    const model = await openModel(fp8);
    const golden = await openCheckpoint(join(fp8, 'dequant_golden.safetensors'));
    const ex = await openCheckpoint(out);
    try {
      expect([...ex.tensors.keys()].filter((n) => n.endsWith('_scale_inv'))).toEqual([]);
      // the source as rxquant reads it: the fixture's golden dequantization (one f32 multiply, then bf16)
      for (const t of golden.tensors.values()) expect(Buffer.compare(await model.tensors.get(t.name)!.read(), await t.read()), t.name).toBe(0);
      // quantized from the dequantized weights: layer 1 expert 3's down_proj (its scale in the other shard)
      const m = 'model.layers.1.mlp.experts.3.down_proj';
      const w = decodeBf16(await golden.tensors.get(`${m}.weight`)!.read());
      const amax = w.reduce((a, x) => Math.max(a, Math.abs(x)), 0);
      const ws2 = Math.fround(amax / 2688);
      expect((await ex.tensors.get(`${m}.weight_scale_2`)!.toFloat32())[0]).toBe(ws2);
      const q = quantizeNvfp4Ref(w, 128, 128, ws2);
      expect(Buffer.compare(await ex.tensors.get(`${m}.weight`)!.read(), packNibblesK(q.codes))).toBe(0);
      expect(Buffer.compare(await ex.tensors.get(`${m}.weight_scale`)!.read(), q.scales)).toBe(0);
      // kept MLA projections (a ragged tile) and the MTP layer's FP8 weights: their BF16 dequantization
      for (const n of ['model.layers.0.self_attn.q_b_proj.weight', 'model.layers.2.self_attn.q_a_proj.weight', 'model.layers.2.mlp.experts.5.up_proj.weight']) {
        expect(ex.tensors.get(n)!.dtype).toBe('BF16');
        expect(Buffer.compare(await ex.tensors.get(n)!.read(), await model.tensors.get(n)!.read()), n).toBe(0);
      }
      // MTP-only BF16 tensors copied unchanged
      for (const n of ['model.layers.2.eh_proj.weight', 'model.layers.2.enorm.weight', 'model.layers.2.shared_head.head.weight']) {
        expect(Buffer.compare(await ex.tensors.get(n)!.read(), await model.checkpoint.tensors.get(n)!.read()), n).toBe(0);
      }
    } finally {
      await ex.close();
      await golden.close();
      await model.close();
    }
  });
});

function decodeBf16(b: Uint8Array): Float32Array {
  const u = new Uint16Array(b.slice().buffer);
  const out = new Float32Array(u.length);
  const v = new Uint32Array(out.buffer);
  for (let i = 0; i < u.length; i++) v[i] = u[i]! << 16;
  return out;
}

describe('DeepSeek R1 rope settings (YaRN)', () => {
  it("reads R1's rope_scaling: factor from the position ratio, attention factor 1 (mscale = mscale_all_dim), the softmax scale times mscale^2; ramped frequencies between interpolation and extrapolation", async () => {
    const { deepseek_v3 } = await import('../src/models/deepseek.js');
    const { inverseFrequencies } = await import('../src/forward/rope.js');
    const raw = JSON.parse(await readFile(join(dir, 'config.json'), 'utf8'));
    delete raw.rope_parameters;
    const r1 = {
      ...raw,
      qk_rope_head_dim: 64, qk_nope_head_dim: 128, v_head_dim: 128, head_dim: 64, max_position_embeddings: 163840, rope_theta: 10000,
      rope_scaling: { beta_fast: 32, beta_slow: 1, factor: 40, mscale: 1.0, mscale_all_dim: 1.0, original_max_position_embeddings: 4096, type: 'yarn' },
    };
    const cfg = deepseek_v3.parseConfig(r1, 'config.json');
    expect(cfg.rope).toMatchObject({ type: 'yarn', factor: 40, originalMaxPositionEmbeddings: 4096, betaFast: 32, betaSlow: 1, attentionFactor: 1 });
    const mscale = 0.1 * Math.log(40) + 1;
    expect(cfg.deepseek!.attentionScale).toBeCloseTo((1 / Math.sqrt(192)) * mscale * mscale, 12);
    const inv = inverseFrequencies(cfg.rope, 64);
    // the fastest dimensions keep the original frequency, the slowest are divided by the factor
    expect(inv[0]).toBe(1);
    expect(inv[31]).toBe(Math.fround(1 / Math.fround(40 * Math.fround(Math.pow(10000, Math.fround(62 / 64))))));
    for (let i = 1; i < 32; i++) expect(inv[i]!).toBeLessThan(inv[i - 1]!);
  });
});
