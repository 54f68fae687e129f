/**
 * Medusa heads (spec families.md §7.1) on the llama31 reference model: a fixture made here (two heads
 * of one ResBlock, seeded bf16 weights), calibrated from the model's own forward pass and exported
 * with the base. The heads' inputs are computed in the test from transformers' last hidden state
 * (../shared/data/reference: hidden_states.2, after the final norm: its max is lm_head.input_amax),
 * plainly: x1 = x0 + silu(x0 W^T + b).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtemp, readFile, rm, writeFile, rename, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { exportCheckpoint, openCheckpoint, openModel, type Stats } from '../src/index.js';
import { calibrateModel } from '../src/calibrate-checkpoint.js';
import { verifyExport } from '../src/verify.js';
import { decodeToFloat32, encodeFromFloat32, f32Bits, roundToDType } from '../src/codecs/float.js';
import { planShards, ShardWriter } from '../src/safetensors/writer.js';
import { quantizeFp8Ref } from '../src/formats/fp8.js';
import { amaxOf } from '../src/formats/common.js';
import { openRunner } from '../src/eval.js';
import { synthetic } from './helpers.js';
import { inputIds } from './reference-forward.js';

const BASE = synthetic('llama31');
const REFERENCE = join(BASE, 'reference.safetensors');
const HEADS = 2, LAYERS = 1;
let tmp: string;
let model: string;
const heads = new Map<string, { data: Float32Array; shape: number[] }>();

/** Writes `base` plus the given extra tensors (bf16) and config.json changes into `to`. */
async function withHeads(to: string, extra: Map<string, { data: Float32Array; shape: number[] }>, config: Record<string, unknown>): Promise<void> {
  await mkdir(to, { recursive: true });
  const cfg = JSON.parse(await readFile(join(BASE, 'config.json'), 'utf8'));
  await writeFile(join(to, 'config.json'), JSON.stringify({ ...cfg, ...config }, null, 2));
  const ck = await openCheckpoint(BASE);
  const specs = [...[...ck.tensors.values()].map((t) => ({ name: t.name, dtype: t.dtype, shape: t.shape })), ...[...extra].map(([name, t]) => ({ name, dtype: 'BF16' as const, shape: t.shape }))];
  const staged = join(to, 'staged');
  const w = await ShardWriter.create(staged, planShards(specs, 1e12));
  for (const t of ck.tensors.values()) await w.write(t.name, await t.read());
  for (const [name, t] of extra) await w.write(name, encodeFromFloat32(t.data, 'BF16'));
  await w.finish();
  await ck.close();
  await rename(join(staged, 'model.safetensors'), join(to, 'model.safetensors'));
  await rm(staged, { recursive: true, force: true });
}

beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'rxq-medusa-'));
  const H = 128, V = 512;
  let seed = 7;
  const rnd = (n: number, scale: number) =>
    Float32Array.from({ length: n }, () => roundToDType(((seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0) / 2 ** 32 - 0.5) * scale, 'BF16'));
  for (let h = 0; h < HEADS; h++) {
    heads.set(`medusa_heads.${h}.0.linear.weight`, { data: rnd(H * H, 0.2), shape: [H, H] });
    heads.set(`medusa_heads.${h}.0.linear.bias`, { data: rnd(H, 0.1), shape: [H] });
    heads.set(`medusa_heads.${h}.1.weight`, { data: rnd(V * H, 0.1), shape: [V, H] });
  }
  model = join(tmp, 'medusa');
  await withHeads(model, heads, { medusa: { num_medusa_heads: HEADS, num_medusa_layers: LAYERS } });
});
afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});

async function reference(): Promise<{ x0: Float32Array; T: number; lmHeadAmax: number }> {
  const ck = await openCheckpoint(REFERENCE);
  const t = ck.tensors.get('hidden_states.2')!;
  const x0 = decodeToFloat32(await t.read(), t.dtype);
  const amax = decodeToFloat32(await ck.tensors.get('lm_head.input_amax')!.read(), 'F32')[0]!;
  await ck.close();
  return { x0, T: t.shape[0]! * t.shape[1]!, lmHeadAmax: amax };
}

/** The head projection's input for head h, computed plainly: x0 + silu(x0 W^T + b), f32 at each step as torch. */
function resBlock(x0: Float32Array, T: number, h: number): Float32Array {
  const H = 128;
  const W = heads.get(`medusa_heads.${h}.0.linear.weight`)!.data, b = heads.get(`medusa_heads.${h}.0.linear.bias`)!.data;
  const out = new Float32Array(T * H);
  for (let t = 0; t < T; t++)
    for (let n = 0; n < H; n++) {
      let s = 0;
      for (let k = 0; k < H; k++) s += x0[t * H + k]! * W[n * H + k]!;
      const y = Math.fround(Math.fround(s) + b[n]!);
      out[t * H + n] = x0[t * H + n]! + Math.fround(y / (1 + Math.exp(-y)));
    }
  return out;
}

const rel = (a: number, b: number) => Math.abs(a - b) / Math.max(Math.abs(b), 1e-12);

describe('Medusa heads', () => {
  let stats: Stats;
  beforeAll(async () => {
    stats = await calibrateModel(model, await inputIds(REFERENCE));
  });

  it('are found from config.json, and a checkpoint that disagrees with it is refused before any work', async () => {
    const m = await openModel(model);
    expect(m.medusa?.config).toEqual({ numHeads: 2, numLayers: 1 });
    expect(m.medusa?.layout.linears).toEqual(['medusa_heads.0.0.linear', 'medusa_heads.0.1', 'medusa_heads.1.0.linear', 'medusa_heads.1.1']);
    await m.close();
    const three = join(tmp, 'three');
    await withHeads(three, heads, { medusa: { num_medusa_heads: 3, num_medusa_layers: 1 } });
    await expect(openModel(three)).rejects.toThrow(/medusa_heads\.2\.0\.linear\.weight" is missing/);
    const none = join(tmp, 'none');
    await withHeads(none, heads, {});
    await expect(openModel(none)).rejects.toThrow(/is a Medusa head, but config.json has no "medusa" block/);
  });

  it('calibration: each head linear sees the final normed hidden state, then its ResBlock output (within 1e-4 of a plain computation on transformers states)', async () => {
    const { x0, T, lmHeadAmax } = await reference();
    for (let h = 0; h < HEADS; h++) {
      expect(rel(stats.get(`medusa_heads.${h}.0.linear.input_amax`)![0]!, lmHeadAmax)).toBeLessThan(1e-4);
      expect(rel(stats.get(`medusa_heads.${h}.1.input_amax`)![0]!, amaxOf(resBlock(x0, T, h)))).toBeLessThan(1e-4);
    }
  });

  it('fp8: every head linear quantized by the formulas (weight, weight_scale, input_scale), the bias copied, none in exclude_modules; verify counts them', async () => {
    const out = join(tmp, 'fp8');
    await exportCheckpoint({ model, format: 'fp8', out, stats, workers: 0 });
    const ex = await openCheckpoint(out);
    const f32Of = async (name: string) => decodeToFloat32(await ex.tensors.get(name)!.read(), ex.tensors.get(name)!.dtype);
    for (let h = 0; h < HEADS; h++) {
      for (const m of [`medusa_heads.${h}.0.linear`, `medusa_heads.${h}.1`]) {
        const w = heads.get(`${m}.weight`)!.data;
        const scale = Math.fround(amaxOf(w) / 448);
        expect((await f32Of(`${m}.weight_scale`))[0]).toBe(scale);
        expect(ex.tensors.get(`${m}.weight`)!.dtype).toBe('F8_E4M3');
        expect(Buffer.compare(await ex.tensors.get(`${m}.weight`)!.read(), quantizeFp8Ref(w, scale, 'BF16'))).toBe(0);
        expect(f32Bits((await f32Of(`${m}.input_scale`))[0]!)).toBe(f32Bits(Math.fround(stats.get(`${m}.input_amax`)![0]! / 448)));
      }
      const bias = `medusa_heads.${h}.0.linear.bias`;
      expect(Array.from(await f32Of(bias))).toEqual(Array.from(heads.get(bias)!.data));
    }
    await ex.close();
    const hq = JSON.parse(await readFile(join(out, 'hf_quant_config.json'), 'utf8'));
    expect(hq.quantization.quant_algo).toBe('FP8');
    expect(hq.quantization.exclude_modules.filter((p: string) => p.includes('medusa'))).toEqual([]);
    expect(hq.quantization.exclude_modules).toContain('lm_head');
    const cfg = JSON.parse(await readFile(join(out, 'config.json'), 'utf8'));
    expect(cfg.medusa).toEqual({ num_medusa_heads: 2, num_medusa_layers: 1 });
    const report = await verifyExport(out);
    expect(report.failures).toEqual([]);
    expect(report.medusa).toEqual({ heads: 2, resBlocks: 1, linears: 4, quantized: 4 });
    // eval runs the export's base model as engines run it: the same logits as the export of the
    // model without heads, made with the same statistics
    const plain = join(tmp, 'fp8-base');
    await exportCheckpoint({ model: BASE, format: 'fp8', out: plain, stats, workers: 0 });
    const ids = (await inputIds(REFERENCE))[0]!;
    const logitsOf = async (dir: string) => {
      const r = await openRunner(dir);
      try {
        return Array.from(await r.logits(ids));
      } finally {
        await r.close();
      }
    };
    const withHeads = await logitsOf(out);
    expect(withHeads.every(Number.isFinite)).toBe(true);
    expect(withHeads).toEqual(await logitsOf(plain));
  });

  it('nvfp4: the first ResBlocks of all heads read one input, so they share weight_scale_2 and input_scale', async () => {
    const out = join(tmp, 'nvfp4');
    await exportCheckpoint({ model, format: 'nvfp4', out, stats, workers: 0 });
    const ex = await openCheckpoint(out);
    const scalar = async (name: string) => decodeToFloat32(await ex.tensors.get(name)!.read(), 'F32')[0]!;
    const amax = Math.max(...[0, 1].map((h) => amaxOf(heads.get(`medusa_heads.${h}.0.linear.weight`)!.data)));
    for (let h = 0; h < HEADS; h++) {
      expect(await scalar(`medusa_heads.${h}.0.linear.weight_scale_2`)).toBe(Math.fround(amax / (6 * 448)));
      expect(await scalar(`medusa_heads.${h}.1.weight_scale_2`)).toBe(Math.fround(amaxOf(heads.get(`medusa_heads.${h}.1.weight`)!.data) / (6 * 448)));
    }
    expect(await scalar('medusa_heads.0.0.linear.input_scale')).toBe(await scalar('medusa_heads.1.0.linear.input_scale'));
    await ex.close();
    expect((await verifyExport(out)).failures).toEqual([]);
  });

  it('an AWQ format is refused with the reason, before any work', async () => {
    await expect(exportCheckpoint({ model, format: 'int4_awq', out: join(tmp, 'awq'), stats, workers: 0 })).rejects.toThrow(/Medusa heads.*use fp8, fp8_pb_wo or nvfp4/);
  });
});
