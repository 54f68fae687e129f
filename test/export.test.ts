/**
 * The export against the spec's formulas applied to the source, for every format and every dense
 * reference model, with the activation statistics transformers computed (../shared/data/reference).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtemp, readFile, rm, readdir, mkdir, writeFile, rename } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { exportCheckpoint, loadStats, openCheckpoint, FORMAT_NAMES, type FormatName, type Stats } from '../src/index.js';
import { verifyExport } from '../src/verify.js';
import { decodeToFloat32, f32Bits, encodeFromFloat32 } from '../src/codecs/float.js';
import { planShards, ShardWriter } from '../src/safetensors/writer.js';
import { unpackNibblesK } from '../src/codecs/e2m1.js';
import { unpackInt4Rows } from '../src/codecs/int4.js';
import { E4M3_VALUES } from '../src/codecs/e4m3.js';
import { quantizeFp8Ref } from '../src/formats/fp8.js';
import { fp8BlockScales, quantizeFp8BlockRef, dequantizeFp8Block } from '../src/formats/fp8-block.js';
import { quantizeNvfp4Ref, dequantizeNvfp4 } from '../src/formats/nvfp4.js';
import { int4Scales, quantizeInt4Ref, dequantizeInt4 } from '../src/formats/int4.js';
import { amaxOf } from '../src/formats/common.js';
import { dequantizeFp8 } from '../src/formats/fp8.js';
import { STORIES, REF, synthetic, DENSE_MODELS } from './helpers.js';

let tmp: string;
/** llama31 with every bf16 tensor converted to f16 (made before the tests): f16 sources take their own kernels. */
const F16_COPY = join(tmpdir(), `rxq-export-f16-${process.pid}`);
beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'rxq-export-'));
  await f16Copy(synthetic('llama31'), F16_COPY);
});
afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
  await rm(F16_COPY, { recursive: true, force: true });
});

async function f16Copy(from: string, to: string): Promise<void> {
  await mkdir(to, { recursive: true });
  const config = JSON.parse(await readFile(join(from, 'config.json'), 'utf8'));
  await writeFile(join(to, 'config.json'), JSON.stringify({ ...config, torch_dtype: 'float16' }, null, 2));
  const ck = await openCheckpoint(from);
  const tensors = [...ck.tensors.values()];
  const staged = join(to, 'staged');
  const w = await ShardWriter.create(staged, planShards(tensors.map((t) => ({ name: t.name, dtype: t.dtype === 'BF16' ? 'F16' : t.dtype, shape: t.shape })), 1e12));
  for (const t of tensors) await w.write(t.name, t.dtype === 'BF16' ? encodeFromFloat32(await t.toFloat32(), 'F16') : await t.read());
  await w.finish();
  await ck.close();
  await rename(join(staged, 'model.safetensors'), join(to, 'model.safetensors'));
  await rm(staged, { recursive: true, force: true });
}

const MODELS: { label: string; dir: string; stats: string }[] = [
  ...DENSE_MODELS.map((a) => ({ label: a, dir: synthetic(a), stats: join(synthetic(a), 'reference.safetensors') })),
  { label: 'stories260K', dir: STORIES, stats: join(REF, 'stories260K', 'calib16x256.safetensors') },
  { label: 'llama31 as f16', dir: F16_COPY, stats: join(synthetic('llama31'), 'reference.safetensors') },
];

const GROUPS = [['self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj'], ['mlp.gate_proj', 'mlp.up_proj']];
const LINEARS = ['self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj', 'self_attn.o_proj', 'mlp.gate_proj', 'mlp.up_proj', 'mlp.down_proj'];
const siblings = (m: string) => {
  const [, prefix, short] = /^(model\.layers\.\d+)\.(.*)$/.exec(m)!;
  const g = GROUPS.find((g) => g.includes(short!));
  return g ? g.map((s) => `${prefix}.${s}`) : [m];
};
const DIVISOR: Partial<Record<FormatName, number>> = { fp8: 448, nvfp4: 2688, nvfp4_awq: 2688, w4a8_awq: 448 };
const K_MULTIPLE: Record<FormatName, number> = { fp8: 1, fp8_pb_wo: 1, nvfp4: 16, nvfp4_awq: 16, int4_awq: 128, w4a8_awq: 128 };

/** Relative RMS error of the dequantized export, per format, over all quantized weights of llama31. */
const relErr = new Map<FormatName, number>();

for (const model of MODELS) {
  describe(`export ${model.label}`, () => {
    let stats: Stats;
    let src: Awaited<ReturnType<typeof openCheckpoint>>;
    beforeAll(async () => {
      stats = await loadStats(model.stats);
      src = await openCheckpoint(model.dir);
    });
    afterAll(async () => {
      await src.close();
    });
    for (const format of FORMAT_NAMES) {
      it(`${format}: verify passes, quantized bytes follow the spec's formulas, the rest is untouched`, async () => {
        const out = join(tmp, `${model.label}-${format}`);
        const layers = Number(JSON.parse(await readFile(join(model.dir, 'config.json'), 'utf8')).num_hidden_layers);
        const modules = Array.from({ length: layers }, (_, i) => LINEARS.map((l) => `model.layers.${i}.${l}`)).flat();
        const K = (m: string) => src.tensors.get(`${m}.weight`)!.shape[1]!;
        const quantizable = (m: string) => siblings(m).every((s) => K(s) % K_MULTIPLE[format] === 0);
        const run = exportCheckpoint({ model: model.dir, format, out, stats, workers: format === 'nvfp4' ? 2 : 0 });
        if (!modules.some(quantizable)) {
          await expect(run).rejects.toThrow(/no linear layer .* can be quantized/);
          expect((await readdir(tmp)).some((n) => n.includes(`${model.label}-${format}`))).toBe(false);
          return;
        }
        const done = await run;
        const report = await verifyExport(out);
        expect(report.failures).toEqual([]);
        const ex = await openCheckpoint(out);
        const hq = JSON.parse(await readFile(join(out, 'hf_quant_config.json'), 'utf8'));
        const cfg = JSON.parse(await readFile(join(out, 'config.json'), 'utf8'));
        expect(cfg.quantization_config.ignore).toEqual(hq.quantization.exclude_modules);
        let errNum = 0, errDen = 0;
        const f32Of = async (name: string) => decodeToFloat32(await ex.tensors.get(name)!.read(), ex.tensors.get(name)!.dtype);
        for (const m of modules) {
          const srcW = src.tensors.get(`${m}.weight`)!;
          const w = await srcW.toFloat32();
          const [N, Kk] = srcW.shape as [number, number];
          if (!quantizable(m)) {
            expect(ex.tensors.get(`${m}.weight`)!.dtype).toBe(srcW.dtype);
            expect(done.plan.warnings.some((x) => x.startsWith(m))).toBe(true);
            expect(hq.quantization.exclude_modules.some((p: string) => m.startsWith(p.replace(/\*$/, '')))).toBe(true);
            continue;
          }
          const packed = await ex.tensors.get(`${m}.weight`)!.read();
          const sib = siblings(m);
          const unify = format !== 'fp8' && sib.length > 1;
          const group = unify ? sib : [m];
          // input_scale = amax / divisor, max over fused siblings
          const div = DIVISOR[format];
          if (div) {
            const amax = Math.max(...group.map((s) => stats.get(`${s}.input_amax`)![0]!));
            expect(f32Bits((await f32Of(`${m}.input_scale`))[0]!)).toBe(f32Bits(Math.fround(amax / div)));
          } else expect(ex.tensors.has(`${m}.input_scale`)).toBe(false);
          let deq: Float32Array;
          if (format === 'fp8') {
            const scale = Math.fround(amaxOf(w) / 448);
            expect((await f32Of(`${m}.weight_scale`))[0]).toBe(scale);
            expect(Buffer.compare(packed, quantizeFp8Ref(w, scale, srcW.dtype as 'BF16'))).toBe(0);
            deq = dequantizeFp8(packed, scale);
          } else if (format === 'fp8_pb_wo') {
            const sc = fp8BlockScales(w, N, Kk);
            expect(Array.from(await f32Of(`${m}.weight_scale`))).toEqual(Array.from(sc));
            expect(ex.tensors.get(`${m}.weight_scale`)!.shape).toEqual([Math.ceil(N / 128), 1, Math.ceil(Kk / 128), 1]);
            expect(Buffer.compare(packed, quantizeFp8BlockRef(w, N, Kk, sc))).toBe(0);
            deq = dequantizeFp8Block(packed, N, Kk, sc);
          } else if (format === 'nvfp4' || format === 'nvfp4_awq') {
            const gAmax = Math.max(...(await Promise.all(group.map(async (s) => amaxOf(await src.tensors.get(`${s}.weight`)!.toFloat32())))));
            const ws2 = Math.fround(gAmax / 2688);
            expect((await f32Of(`${m}.weight_scale_2`))[0]).toBe(ws2);
            const ref = quantizeNvfp4Ref(w, N, Kk, ws2);
            expect(Buffer.compare(unpackNibblesK(packed), ref.codes)).toBe(0);
            expect(Buffer.compare(await ex.tensors.get(`${m}.weight_scale`)!.read(), ref.scales)).toBe(0);
            deq = dequantizeNvfp4(ref.codes, ref.scales, N, Kk, ws2);
          } else {
            const sc = int4Scales(w, N, Kk);
            expect(Array.from(await f32Of(`${m}.weight_scale`))).toEqual(Array.from(sc));
            const q = quantizeInt4Ref(w, N, Kk, sc);
            expect(Buffer.compare(Buffer.from(unpackInt4Rows(packed, N, Kk).buffer), Buffer.from(q.buffer))).toBe(0);
            if (format === 'w4a8_awq') {
              const gAmax = Math.max(...(await Promise.all(group.map(async (s) => amaxOf(await src.tensors.get(`${s}.weight`)!.toFloat32())))));
              expect((await f32Of(`${m}.weight_scale_2`))[0]).toBe(Math.fround(gAmax / 448));
            }
            deq = dequantizeInt4(q, N, Kk, sc);
          }
          // AWQ formats without a search: ones, folded into norms for fused groups, kept elsewhere
          if (format.includes('awq')) {
            const folded = sib.length > 1 || (format === 'nvfp4_awq' && (m.endsWith('down_proj') || (m.endsWith('o_proj') && hasNoGqa(cfg))) && model.label !== 'qwen2' && model.label !== 'mistral');
            if (folded) expect(ex.tensors.has(`${m}.pre_quant_scale`)).toBe(false);
            else expect(Array.from(await f32Of(`${m}.pre_quant_scale`)).every((x) => x === 1)).toBe(true);
          }
          for (let i = 0; i < w.length; i++) {
            errNum += (deq[i]! - w[i]!) ** 2;
            errDen += w[i]! ** 2;
          }
        }
        if (model.label === 'llama31') relErr.set(format, Math.sqrt(errNum / errDen));
        // every source tensor that is not a quantized weight is byte-identical
        const quantizedWeights = new Set(modules.filter(quantizable).map((m) => `${m}.weight`));
        for (const [name, t] of src.tensors) {
          if (quantizedWeights.has(name)) continue;
          const o = ex.tensors.get(name)!;
          expect(o.dtype).toBe(t.dtype);
          expect(Buffer.compare(await o.read(), await t.read())).toBe(0);
        }
        await ex.close();
      });
    }
  });
}

function hasNoGqa(cfg: { num_attention_heads: number; num_key_value_heads: number }) {
  return cfg.num_attention_heads === cfg.num_key_value_heads;
}

describe('dequantization error per format (llama31, relative RMS over all quantized weights)', () => {
  // Ranges stated in the README. 4-bit formats sit near 10%, 8-bit near 3%.
  const RANGES: Record<FormatName, [number, number]> = {
    fp8: [0.01, 0.04],
    fp8_pb_wo: [0.01, 0.04],
    nvfp4: [0.06, 0.14],
    nvfp4_awq: [0.06, 0.14],
    int4_awq: [0.05, 0.14],
    w4a8_awq: [0.05, 0.14],
  };
  it('is in the expected range for every format', () => {
    for (const f of FORMAT_NAMES) {
      const e = relErr.get(f);
      expect(e, f).toBeDefined();
      expect(e!, f).toBeGreaterThan(RANGES[f][0]);
      expect(e!, f).toBeLessThan(RANGES[f][1]);
    }
    console.log('relative RMS error:', Object.fromEntries([...relErr].map(([k, v]) => [k, v.toFixed(4)])));
  });
});
