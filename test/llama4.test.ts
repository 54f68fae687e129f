/**
 * Llama 4 text (`llama4_text`) against transformers' reference outputs: hidden states, logits and
 * every statistic recorded (RoPE and chunked attention, L2 qk norm, sigmoid router, every expert on
 * every token scaled by its score, shared expert); exports of the fused 3-D experts byte for byte
 * against the spec's formulas (families.md §4.2-4.3) applied to the source and the statistics.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chmod, cp, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openCheckpoint, loadStats, exportCheckpoint, verifyExport, type Stats } from '../src/index.js';
import { calibrateModel } from '../src/calibrate-checkpoint.js';
import { perplexity } from '../src/eval.js';
import { jsGemm } from '../src/forward/gemm.js';
import { quantizeFp8Ref } from '../src/formats/fp8.js';
import { quantizeNvfp4Ref } from '../src/formats/nvfp4.js';
import { llama4LayerOverSamples, type Llama4LayerNames } from '../src/forward/llama4.js';
import { synthetic } from './helpers.js';
import { amaxOf } from '../src/formats/common.js';
import { checkForwardAgainstReference, checkPartsAgainstWholeLayer, expectStatsMatchReference, inputIds } from './reference-forward.js';

const dir = synthetic('llama4_text');
const refPath = join(dir, 'reference.safetensors');
let tmp: string;
let ids: number[][];
beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'rxq-llama4-'));
  ids = await inputIds(refPath);
});
afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});

describe('llama4_text: forward pass vs transformers', () => {
  for (const engine of ['js', 'onnx'] as const) {
    it(`hidden states, final norm and logits within 1e-4 relative, ${engine} GEMM`, () => checkForwardAgainstReference(dir, refPath, engine));
  }
});


describe('llama4_text: a MoE layer over all samples, experts a group at a time', () => {
  it('gives the same hidden states bit for bit, and the same statistics, as the whole layer on each sample', () =>
    checkPartsAgainstWholeLayer(
      dir,
      refPath,
      1,
      async ({ cfg, src, layout, states, cos, sin, hooks }) => {
        const role = (r: string) => layout.linears[layout.roles.indexOf(r)]!;
        const names: Llama4LayerNames = {
          q: role('q'), k: role('k'), v: role('v'), o: role('o'),
          inputNorm: `${layout.prefix}.input_layernorm.weight`, postNorm: `${layout.prefix}.post_attention_layernorm.weight`,
          mlp: { kind: 'moe', router: layout.observed!.router!, gateUp: layout.fusedExperts![0]!, down: layout.fusedExperts![1]!, shared: { gate: role('shared.gate'), up: role('shared.up'), down: role('shared.down') } },
        };
        const l4 = cfg.llama4!;
        // one expert per group: the smallest budget
        await llama4LayerOverSamples(src, 1, names, cfg, l4, jsGemm, states, cos, sin, hooks, 3 * l4.expertIntermediateSize * cfg.hiddenSize * 4);
      },
      // absmean of the one statistic the experts share sums the same values in another order (f64)
      (k) => !k.endsWith('input_absmean'),
    ));
});

describe('llama4_text: calibration and export', () => {
  let stats: Stats;
  beforeAll(async () => {
    stats = await calibrateModel(dir, ids);
  });

  it('every statistic transformers recorded within 1e-4 (router and shared expert included); one per fused expert parameter', async () => {
    const checked = expectStatsMatchReference(stats, await loadStats(refPath));
    expect(checked).toBeGreaterThanOrEqual(2 * 8 * 2 + 2);
    for (let l = 0; l < 2; l++) {
      const f = `model.layers.${l}.feed_forward`;
      // the experts see the router's input scaled by sigmoid scores (<= 1)
      const gu = stats.get(`${f}.experts.gate_up_proj.input_amax`)![0]!;
      expect(gu).toBeGreaterThan(0);
      expect(gu).toBeLessThanOrEqual(stats.get(`${f}.router.input_amax`)![0]!);
      expect(stats.get(`${f}.experts.down_proj.input_amax`)![0]!).toBeGreaterThan(0);
    }
  });

  for (const format of ['fp8', 'nvfp4'] as const) {
    it(`${format}: fused experts kept 3-D with one scale set each, bytes from the spec's formulas; verify passes`, async () => {
      const out = join(tmp, `l4-${format}`);
      await exportCheckpoint({ model: dir, format, out, stats, workers: 0 });
      const hq = JSON.parse(await readFile(join(out, 'hf_quant_config.json'), 'utf8'));
      expect(hq.quantization.exclude_modules).toEqual(['lm_head', 'model.embed_tokens', 'model.layers.0.feed_forward.router', 'model.layers.1.feed_forward.router']);
      expect((await verifyExport(out)).failures).toEqual([]);
      const src = await openCheckpoint(dir);
      const ex = await openCheckpoint(out);
      const scalar = async (n: string) => (await ex.tensors.get(n)!.toFloat32())[0]!;
      for (let l = 0; l < 2; l++) {
        for (const p of ['gate_up_proj', 'down_proj']) {
          const m = `model.layers.${l}.feed_forward.experts.${p}`;
          const t = src.tensors.get(m)!;
          const [E, A, B] = t.shape as [number, number, number];
          const w = await t.toFloat32();
          const amax = amaxOf(w); // one weight scale over all experts (and both halves of gate_up)
          expect(await scalar(`${m}_input_scale`)).toBe(Math.fround(stats.get(`${m}.input_amax`)![0]! / (format === 'fp8' ? 448 : 2688)));
          if (format === 'fp8') {
            const ws = Math.fround(amax / 448);
            expect(await scalar(`${m}_weight_scale`)).toBe(ws);
            expect(ex.tensors.get(m)!.shape).toEqual([E, A, B]);
            expect(Buffer.compare(await ex.tensors.get(m)!.read(), quantizeFp8Ref(w, ws, 'BF16')), m).toBe(0);
          } else {
            const ws2 = Math.fround(amax / 2688);
            expect(await scalar(`${m}_weight_scale_2`)).toBe(ws2);
            const packed = await ex.tensors.get(m)!.read();
            const scales = await ex.tensors.get(`${m}_weight_scale`)!.read();
            for (let e = 0; e < E; e++) {
              // transposed to [B, A], quantized along A, then transposed back (maybe_transpose_expert_weight_dimensions)
              const wt = new Float32Array(B * A);
              for (let a = 0; a < A; a++) for (let b = 0; b < B; b++) wt[b * A + a] = w[(e * A + a) * B + b]!;
              const q = quantizeNvfp4Ref(wt, B, A, ws2);
              for (let j = 0; j < A / 2; j++)
                for (let b = 0; b < B; b++) {
                  const want = q.codes[b * A + 2 * j]! | (q.codes[b * A + 2 * j + 1]! << 4);
                  if (packed[(e * (A / 2) + j) * B + b] !== want) throw new Error(`${m} byte [${e}, ${j}, ${b}]`);
                }
              for (let g = 0; g < A / 16; g++)
                for (let b = 0; b < B; b++) {
                  if (scales[(e * (A / 16) + g) * B + b] !== q.scales[b * (A / 16) + g]) throw new Error(`${m} scale [${e}, ${g}, ${b}]`);
                }
            }
          }
        }
        // the router is copied unchanged
        const r = `model.layers.${l}.feed_forward.router.weight`;
        expect(Buffer.compare(await ex.tensors.get(r)!.read(), await src.tensors.get(r)!.read())).toBe(0);
      }
      await src.close();
      await ex.close();
    });
  }

  it('an export runs as engines run it: perplexity on the token ids close to the source', async () => {
    const file = join(tmp, 'ids.json');
    await writeFile(file, JSON.stringify(ids));
    const source = (await perplexity(dir, file)).perplexity;
    const fp8 = (await perplexity(join(tmp, 'l4-fp8'), file)).perplexity;
    const nvfp4 = (await perplexity(join(tmp, 'l4-nvfp4'), file)).perplexity;
    expect(Math.abs(fp8 / source - 1)).toBeLessThan(0.02);
    expect(Math.abs(nvfp4 / source - 1)).toBeLessThan(0.2);
    expect(nvfp4).not.toBe(fp8);
  });

  it('verify fails a fused expert without its input_scale; AWQ and fp8_pb_wo are refused with the reason', async () => {
    const good = join(tmp, 'l4-nvfp4');
    const d = join(tmp, 'l4-broken');
    await cp(good, d, { recursive: true });
    for (const f of await readdir(d)) await chmod(join(d, f), 0o644);
    const ck = await openCheckpoint(d);
    const { planShards, ShardWriter } = await import('../src/safetensors/writer.js');
    const keep = [...ck.tensors.values()].filter((t) => t.name !== 'model.layers.1.feed_forward.experts.down_proj_input_scale');
    const w = await ShardWriter.create(`${d}-staged`, planShards(keep.map((t) => ({ name: t.name, dtype: t.dtype, shape: [...t.shape] })), 1e12));
    for (const t of keep) await w.write(t.name, await t.read());
    await w.finish();
    await ck.close();
    await cp(join(`${d}-staged`, 'model.safetensors'), join(d, 'model.safetensors'));
    expect((await verifyExport(d)).failures).toContain('model.layers.1.feed_forward.experts.down_proj_input_scale is missing');
    await expect(exportCheckpoint({ model: dir, format: 'nvfp4_awq', out: join(tmp, 'x'), stats, workers: 0 })).rejects.toThrow(/not available for Llama 4 yet/);
    await expect(exportCheckpoint({ model: dir, format: 'fp8_pb_wo', out: join(tmp, 'y'), stats, workers: 0 })).rejects.toThrow(/does not define Llama 4's fused expert tensors/);
  });
});

describe('llama4 (the multimodal checkpoint, made here from llama4_text)', () => {
  it('exports the text part as llama4_text exports it, copies the vision tower and projector unchanged and excludes them', async () => {
    // the text weights under language_model., the config under text_config, a small vision tower beside them
    const mm = join(tmp, 'llama4-mm');
    const src = await openCheckpoint(dir);
    const { planShards, ShardWriter } = await import('../src/safetensors/writer.js');
    const vision: [string, number[]][] = [['vision_model.patch_embedding.linear.weight', [64, 588]], ['vision_model.model.layers.0.mlp.fc1.weight', [256, 64]], ['multi_modal_projector.linear_1.weight', [128, 64]]];
    const specs = [
      ...[...src.tensors.values()].map((t) => ({ name: `language_model.${t.name}`, dtype: t.dtype, shape: [...t.shape] })),
      ...vision.map(([name, shape]) => ({ name, dtype: 'BF16' as const, shape })),
    ];
    const w = await ShardWriter.create(mm, planShards(specs, 1e12));
    for (const t of src.tensors.values()) await w.write(`language_model.${t.name}`, await t.read());
    for (const [name, shape] of vision) await w.write(name, Uint8Array.from({ length: shape[0]! * shape[1]! * 2 }, (_, i) => (i * 37 + name.length) & 0x3f));
    const textConfig = JSON.parse(await readFile(join(dir, 'config.json'), 'utf8'));
    await w.writeSideFile('config.json', JSON.stringify({ architectures: ['Llama4ForConditionalGeneration'], model_type: 'llama4', text_config: textConfig, vision_config: { hidden_size: 64 }, image_token_index: 200092 }, null, 2));
    await w.finish();
    await src.close();

    const mmStats = await calibrateModel(mm, ids);
    const textStats = await calibrateModel(dir, ids);
    for (const [k, v] of textStats) expect(Buffer.compare(Buffer.from(v.buffer), Buffer.from(mmStats.get(`language_model.${k}`)!.buffer)), k).toBe(0);
    const a = join(tmp, 'mm-nvfp4'), b = join(tmp, 'text-nvfp4');
    await exportCheckpoint({ model: mm, format: 'nvfp4', out: a, stats: mmStats, workers: 0 });
    await exportCheckpoint({ model: dir, format: 'nvfp4', out: b, stats: textStats, workers: 0 });
    const ea = await openCheckpoint(a), eb = await openCheckpoint(b), s0 = await openCheckpoint(mm);
    for (const t of eb.tensors.values()) {
      const u = ea.tensors.get(`language_model.${t.name}`);
      expect(u, t.name).toBeDefined();
      expect(Buffer.compare(await u!.read(), await t.read()), t.name).toBe(0);
    }
    for (const [name] of vision) expect(Buffer.compare(await ea.tensors.get(name)!.read(), await s0.tensors.get(name)!.read()), name).toBe(0);
    expect(ea.tensors.size).toBe(eb.tensors.size + vision.length);
    await ea.close();
    await eb.close();
    await s0.close();
    const hq = JSON.parse(await readFile(join(a, 'hf_quant_config.json'), 'utf8'));
    expect(hq.quantization.exclude_modules).toEqual([
      'language_model.lm_head', 'language_model.model.embed_tokens', 'language_model.model.layers.0.feed_forward.router', 'language_model.model.layers.1.feed_forward.router',
      'multi_modal_projector*', 'vision_model*',
    ]);
    const cfg = JSON.parse(await readFile(join(a, 'config.json'), 'utf8'));
    expect(cfg.model_type).toBe('llama4');
    expect(cfg.vision_config).toEqual({ hidden_size: 64 });
    expect(cfg.text_config.model_type).toBe('llama4_text');
    expect(cfg.quantization_config.quant_algo).toBe('NVFP4');
    expect((await verifyExport(a)).failures).toEqual([]);
  });
});
