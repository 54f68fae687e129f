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
import { jsGemm } from '../src/forward/gemm.js';
import { quantizeNvfp4Ref } from '../src/formats/nvfp4.js';
import { packNibblesK } from '../src/codecs/e2m1.js';
import { deepseekDenseOverSamples, deepseekLayerOverSamples, type DeepseekLayerNames } from '../src/forward/deepseek.js';
import { synthetic } from './helpers.js';
import { amaxOf } from '../src/formats/common.js';
import { checkForwardAgainstReference, checkPartsAgainstWholeLayer, expectStatsMatchReference, inputIds } from './reference-forward.js';
import type { LayerLayout } from '../src/models/index.js';

const dir = synthetic('deepseek_v3');
const refPath = join(dir, 'reference.safetensors');
let tmp: string;
let ids: number[][];
beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'rxq-deepseek-'));
  ids = await inputIds(refPath);
});
afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});

describe('deepseek_v3: forward pass vs transformers', () => {
  for (const engine of ['js', 'onnx'] as const) {
    it(`hidden states, final norm and logits within 1e-4 relative, ${engine} GEMM`, () => checkForwardAgainstReference(dir, refPath, engine));
  }
});


/** The layer's names as the DeepSeek forward block takes them, from its layout. */
function dsNames(layout: LayerLayout, moe: boolean): DeepseekLayerNames {
  const role = (r: string) => layout.linears[layout.roles.indexOf(r)]!;
  const a0 = layout.attention;
  const r = layout.observed?.router;
  return {
    qA: role('q_a'), qANorm: `${a0}.q_a_layernorm.weight`, qB: role('q_b'), kvA: role('kv_a'), kvANorm: `${a0}.kv_a_layernorm.weight`, kvB: role('kv_b'), o: role('o'),
    inputNorm: `${layout.prefix}.input_layernorm.weight`, postNorm: `${layout.prefix}.post_attention_layernorm.weight`,
    mlp: moe
      ? { kind: 'moe', router: r!, bias: `${r}.e_score_correction_bias`, experts: Array.from({ length: 8 }, (_, e) => ({ gate: role(`e${e}.gate`), up: role(`e${e}.up`), down: role(`e${e}.down`) })), shared: { gate: role('shared.gate'), up: role('shared.up'), down: role('shared.down') } }
      : { kind: 'dense', gate: role('gate'), up: role('up'), down: role('down') },
  };
}

describe('deepseek_v3: a layer a part at a time over all samples', () => {
  it('MoE layer, routed experts one per group: the same hidden states and statistics, bit for bit, as the whole layer on each sample', () =>
    checkPartsAgainstWholeLayer(dir, refPath, 1, ({ cfg, src, layout, states, cos, sin, hooks }) =>
      deepseekLayerOverSamples(src, dsNames(layout, true), cfg, cfg.deepseek!, jsGemm, states, cos, sin, hooks, 3 * cfg.deepseek!.moeIntermediateSize * cfg.hiddenSize * 4)));
  it('dense layer, its MLP in ragged 40-row bands: the same bits (JavaScript GEMM)', () =>
    checkPartsAgainstWholeLayer(dir, refPath, 0, ({ cfg, src, layout, states, cos, sin, hooks }) =>
      deepseekDenseOverSamples(src, dsNames(layout, false), cfg, cfg.deepseek!, jsGemm, states, cos, sin, hooks, 2 * 40 * cfg.hiddenSize * 4)));
});

describe('deepseek_v3: calibration and the NVFP4 recipe', () => {
  let stats: Stats;
  beforeAll(async () => {
    stats = await calibrateModel(dir, ids);
  });

  it('every statistic transformers recorded within 1e-4; one per routed expert linear', async () => {
    const checked = expectStatsMatchReference(stats, await loadStats(refPath));
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
    await expect(exportCheckpoint({ model: dir, format: 'nvfp4', out: join(tmp, 'y'), stats, kvCache: 'fp8', workers: 0 })).rejects.toThrow(/--kv-cache fp8 is not available for DeepSeek V3: MLA has no k_proj/);
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
