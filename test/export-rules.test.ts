import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtemp, rm, cp, writeFile, readFile, chmod, readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { summarizeExcludeModules, exportCheckpoint, loadStats, openCheckpoint, readCheckpoint, quantize, pack, writeShards, type Stats, type QuantizedUnit } from '../src/index.js';
import { lastValueFrom, map } from 'rxjs';
import { quantizeNvfp4Ref } from '../src/formats/nvfp4.js';
import { decodeToFloat32, roundBf16, f32ToBf16 } from '../src/codecs/float.js';
import { planShards, ShardWriter } from '../src/safetensors/writer.js';
import { synthetic, STORIES } from './helpers.js';

let tmp: string;
beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'rxq-rules-'));
});
afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});

describe('exclude_modules compression (spec §3.5 verified examples)', () => {
  it('12-layer Llama, FP8 except lm_head, embed_tokens and layer 1', () => {
    const lin = ['self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj', 'self_attn.o_proj', 'mlp.gate_proj', 'mlp.up_proj', 'mlp.down_proj'];
    const q: string[] = [], u = ['lm_head', 'model.embed_tokens'];
    for (let i = 0; i < 12; i++) for (const l of lin) (i === 1 ? u : q).push(`model.layers.${i}.${l}`);
    expect(summarizeExcludeModules(u, q)).toEqual(['lm_head', 'model.embed_tokens', 'model.layers.1.*']);
  });
  it('Qwen3-MoE experts-only NVFP4', () => {
    const q: string[] = [], u = ['lm_head', 'model.embed_tokens'];
    for (let i = 0; i < 2; i++) {
      for (const a of ['q_proj', 'k_proj', 'v_proj', 'o_proj']) u.push(`model.layers.${i}.self_attn.${a}`);
      u.push(`model.layers.${i}.mlp.gate`);
      for (let e = 0; e < 4; e++) for (const p of ['gate_proj', 'up_proj', 'down_proj']) q.push(`model.layers.${i}.mlp.experts.${e}.${p}`);
    }
    expect(summarizeExcludeModules(u, q)).toEqual([
      'lm_head', 'model.embed_tokens', 'model.layers.0.mlp.gate', 'model.layers.0.self_attn*', 'model.layers.1.mlp.gate', 'model.layers.1.self_attn*',
    ]);
  });
});

async function copyModel(src: string, name: string): Promise<string> {
  const d = join(tmp, name);
  await cp(src, d, { recursive: true });
  for (const f of await readdir(d)) await chmod(join(d, f), 0o644);
  return d;
}

describe('KV cache', () => {
  it('fp8 writes k_scale/v_scale = amax/448 per attention; fp8_cast writes none; none writes null', async () => {
    const stats: Stats = await loadStats(join(synthetic('llama31'), 'reference.safetensors'));
    await expect(exportCheckpoint({ model: synthetic('llama31'), format: 'fp8', out: join(tmp, 'kv0'), stats, kvCache: 'fp8', workers: 0 })).rejects.toThrow(
      /--kv-cache fp8 needs post-RoPE K\/V amax statistics: "model.layers.0.self_attn.k_amax"/,
    );
    for (let i = 0; i < 2; i++) {
      stats.set(`model.layers.${i}.self_attn.k_amax`, Float32Array.of(10.5 + i));
      stats.set(`model.layers.${i}.self_attn.v_amax`, Float32Array.of(3 + i));
    }
    await exportCheckpoint({ model: synthetic('llama31'), format: 'fp8', out: join(tmp, 'kv1'), stats, kvCache: 'fp8', workers: 0 });
    const ck = await openCheckpoint(join(tmp, 'kv1'));
    const k1 = ck.tensors.get('model.layers.1.self_attn.k_proj.k_scale')!;
    expect(k1.shape).toEqual([]);
    expect(decodeToFloat32(await k1.read(), 'F32')[0]).toBe(Math.fround(11.5 / 448));
    expect(decodeToFloat32(await ck.tensors.get('model.layers.0.self_attn.v_proj.v_scale')!.read(), 'F32')[0]).toBe(Math.fround(3 / 448));
    await ck.close();
    await exportCheckpoint({ model: synthetic('llama31'), format: 'fp8', out: join(tmp, 'kv2'), stats, kvCache: 'none', workers: 0 });
    const hq = JSON.parse(await readFile(join(tmp, 'kv2', 'hf_quant_config.json'), 'utf8'));
    expect(hq.quantization.kv_cache_quant_algo).toBeNull();
    const cfg = JSON.parse(await readFile(join(tmp, 'kv2', 'config.json'), 'utf8'));
    expect(cfg.quantization_config.kv_cache_scheme).toBeUndefined();
  });
});

describe('AWQ input_scale with a given pre_quant_scale (ModelOpt apply_pre_quant_scale_and_smooth)', () => {
  // ModelOpt: amax = bf16(max_k f32(bf16(channel_amax_k) * pqs_k)) with pqs in f32, then fused
  // siblings share the max, input_scale = amax / 448 (W4A8) or / 2688 (NVFP4)
  it('bf16 llama31, power-of-two and other scales: input_scale follows that rule for nvfp4_awq and w4a8_awq', async () => {
    const dir = synthetic('llama31');
    const base: Stats = await loadStats(join(dir, 'reference.safetensors'));
    const stats: Stats = new Map(base);
    const amax = new Map<string, number>();
    let seed = 0;
    for (const [k, v] of base) {
      if (!k.endsWith('.input_absmean')) continue;
      const m = k.slice(0, -'.input_absmean'.length);
      seed++;
      // per-channel amax: not bf16 values (so the cast matters); scales: powers of two on odd linears, others on even
      const ch = Float32Array.from(v, (x, i) => Math.fround(x * 3.3 + 0.01 * ((i * 13 + seed) % 7)));
      const pqs = Float32Array.from(v, (_, i) => (seed % 2 ? 2 ** (((i + seed) % 5) - 2) : Math.fround(0.55 + ((i * 7 + seed) % 11) / 9.7)));
      stats.set(`${m}.input_channel_amax`, ch);
      stats.set(`${m}.pre_quant_scale`, pqs);
      let mx = 0;
      for (let i = 0; i < ch.length; i++) mx = Math.max(mx, Math.fround(roundBf16(ch[i]!) * pqs[i]!));
      amax.set(m, roundBf16(mx));
    }
    for (const [format, div] of [['nvfp4_awq', 2688], ['w4a8_awq', 448]] as const) {
      const out = join(tmp, `awq-in-${format}`);
      await exportCheckpoint({ model: dir, format, out, stats, workers: 0 });
      const ck = await openCheckpoint(out);
      try {
        let checked = 0;
        for (let l = 0; l < 2; l++) {
          const p = `model.layers.${l}`;
          const groups = [['self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj'], ['self_attn.o_proj'], ['mlp.gate_proj', 'mlp.up_proj'], ['mlp.down_proj']];
          for (const g of groups) {
            const want = Math.fround(Math.max(...g.map((m) => amax.get(`${p}.${m}`)!)) / div);
            for (const m of g) {
              const t = ck.tensors.get(`${p}.${m}.input_scale`)!;
              expect(decodeToFloat32(await t.read(), 'F32')[0], `${format} ${p}.${m}`).toBe(want);
              checked++;
            }
          }
        }
        expect(checked).toBe(14);
      } finally {
        await ck.close();
      }
    }
  });
});

describe('AWQ pre_quant_scale folding (spec §8.2-8.3)', () => {
  it('int4_awq: q/k/v scales averaged and folded into input_layernorm, o_proj keeps its own', async () => {
    const dir = synthetic('llama31');
    const stats: Stats = new Map();
    const K = 128;
    const pq = (seed: number) => Float32Array.from({ length: K }, (_, k) => roundBf16(0.5 + ((k * seed) % 17) / 16));
    const names = ['q_proj', 'k_proj', 'v_proj'].map((p) => `model.layers.0.self_attn.${p}`);
    names.forEach((n, i) => stats.set(`${n}.pre_quant_scale`, pq(i + 3)));
    stats.set('model.layers.0.self_attn.o_proj.pre_quant_scale', pq(7));
    await exportCheckpoint({ model: dir, format: 'int4_awq', out: join(tmp, 'awq'), stats, workers: 0 });
    const src = await openCheckpoint(dir);
    const ex = await openCheckpoint(join(tmp, 'awq'));
    // norm' = bf16(norm * mean(pqs_q, pqs_k, pqs_v))
    const norm = await src.tensors.get('model.layers.0.input_layernorm.weight')!.toFloat32();
    const got = await ex.tensors.get('model.layers.0.input_layernorm.weight')!.toFloat32();
    for (let k = 0; k < K; k++) {
      const mean = roundBf16(Math.fround(Math.fround(Math.fround(pq(3)[k]! + pq(4)[k]!) + pq(5)[k]!) / 3));
      expect(got[k]).toBe(roundBf16(Math.fround(norm[k]! * mean)));
    }
    for (const n of names) expect(ex.tensors.has(`${n}.pre_quant_scale`)).toBe(false);
    const opqs = ex.tensors.get('model.layers.0.self_attn.o_proj.pre_quant_scale')!;
    expect(opqs.dtype).toBe('BF16');
    expect(Array.from(await opqs.toFloat32())).toEqual(Array.from(pq(7)));
    // layer 1 had no scales: its norm is untouched
    expect(Buffer.compare(await ex.tensors.get('model.layers.1.input_layernorm.weight')!.read(), await src.tensors.get('model.layers.1.input_layernorm.weight')!.read())).toBe(0);
    await src.close();
    await ex.close();
  });
});

describe('bad weights and shapes', () => {
  it('NaN in a weight is an error naming the tensor, and no output folder appears', async () => {
    const dir = await copyModel(synthetic('qwen3'), 'nan-model');
    // rewrite model.safetensors with one NaN in layer 1's up_proj
    const ck = await openCheckpoint(dir);
    const specs = [...ck.tensors.values()].map((t) => ({ name: t.name, dtype: t.dtype, shape: t.shape }));
    const plan = planShards(specs, 1e12);
    const staged = join(tmp, 'nan-staged');
    const w = await ShardWriter.create(staged, plan);
    for (const t of ck.tensors.values()) {
      const b = await t.read();
      if (t.name === 'model.layers.1.mlp.up_proj.weight') new Uint16Array(b.buffer, b.byteOffset, 4)[3] = f32ToBf16(NaN);
      await w.write(t.name, b);
    }
    await w.finish();
    await ck.close();
    await cp(join(staged, 'model.safetensors'), join(dir, 'model.safetensors'));
    const out = join(tmp, 'nan-out');
    await expect(exportCheckpoint({ model: dir, format: 'fp8_pb_wo', out, workers: 0 })).rejects.toThrow(
      /model.safetensors: tensor "model.layers.1.mlp.up_proj.weight" has NaN at row 0, column 3/,
    );
    expect((await readdir(tmp)).filter((n) => n.includes('nan-out'))).toEqual([]);
  });

  it('stories260K NVFP4: down_proj (K=172) stays F32, is excluded, and is reported', async () => {
    const stats = await loadStats(join(STORIES, '..', '..', 'reference', 'stories260K', 'calib16x256.safetensors'));
    const done = await exportCheckpoint({ model: STORIES, format: 'nvfp4', out: join(tmp, 's-nvfp4'), stats, workers: 0 });
    expect(done.plan.warnings).toContain('model.layers.0.mlp.down_proj kept in F32: in_features 172 is not a multiple of 16');
    const hq = JSON.parse(await readFile(join(tmp, 's-nvfp4', 'hf_quant_config.json'), 'utf8'));
    expect(hq.quantization.exclude_modules).toEqual([
      'lm_head', 'model.embed_tokens', 'model.layers.0.mlp.down_proj', 'model.layers.1.mlp.down_proj',
      'model.layers.2.mlp.down_proj', 'model.layers.3.mlp.down_proj', 'model.layers.4.mlp.down_proj',
    ]);
  });

  it('unsupported architectures get a clear error listing the supported ones', async () => {
    const d = await copyModel(synthetic('llama31'), 'gpt-neox');
    const cfg = JSON.parse(await readFile(join(d, 'config.json'), 'utf8'));
    await writeFile(join(d, 'config.json'), JSON.stringify({ ...cfg, model_type: 'gpt_neox' }));
    await expect(exportCheckpoint({ model: d, format: 'fp8_pb_wo', out: join(tmp, 'neox'), workers: 0 })).rejects.toThrow(
      /model_type "gpt_neox" is not supported; supported: llama, qwen2, qwen3, mistral, mixtral, qwen3_moe, llama4_text, llama4, deepseek_v3/,
    );
  });
});

describe('config files', () => {
  it('config.json keeps the source config (Python float spelling included) and appends quantization_config', async () => {
    const out = join(tmp, 'cfg');
    await exportCheckpoint({ model: synthetic('qwen2'), format: 'fp8_pb_wo', out, workers: 0 });
    const text = await readFile(join(out, 'config.json'), 'utf8');
    expect(text).toContain('"rms_norm_eps": 1e-06');
    expect(text).toContain('"rope_theta": 10000.0');
    const cfg = JSON.parse(text);
    expect(Object.keys(cfg).at(-1)).toBe('quantization_config');
    expect(cfg.quantization_config).toEqual({
      ignore: ['lm_head', 'model.embed_tokens'],
      quant_algo: 'fp8_pb_wo',
      kv_cache_scheme: { dynamic: false, num_bits: 8, type: 'float' },
      producer: { name: 'modelopt', version: '0.47.0' },
      quant_method: 'modelopt',
    });
    const hq = await readFile(join(out, 'hf_quant_config.json'), 'utf8');
    expect(hq).toBe(
      '{\n    "producer": {\n        "name": "modelopt",\n        "version": "0.47.0"\n    },\n    "quantization": {\n        "quant_algo": "fp8_pb_wo",\n        "kv_cache_quant_algo": "FP8",\n        "exclude_modules": [\n            "lm_head",\n            "model.embed_tokens"\n        ]\n    }\n}',
    );
  });
});

describe('streaming in row chunks', () => {
  it('gives byte-identical output whatever the chunk size (fp8 bands, nvfp4, int4 row pairs, AWQ edits), workers or not', async () => {
    const stats: Stats = await loadStats(join(synthetic('llama31'), 'reference.safetensors'));
    // give every linear an AWQ scale so the per-chunk edits (divide, resmooth, row folds) run too
    for (const [k, v] of [...stats]) if (k.endsWith('.input_absmean')) stats.set(k.replace('input_absmean', 'pre_quant_scale'), v.map((x) => 0.5 + x));
    for (const format of ['fp8', 'fp8_pb_wo', 'nvfp4', 'nvfp4_awq', 'int4_awq', 'w4a8_awq'] as const) {
      const a = join(tmp, `chunk-big-${format}`), b = join(tmp, `chunk-small-${format}`);
      await exportCheckpoint({ model: synthetic('llama31'), format, out: a, stats, workers: 0 });
      // 4 KiB chunks: 16 rows of 128 bf16 (fp8_pb_wo rounds up to one 128-row band)
      await exportCheckpoint({ model: synthetic('llama31'), format, out: b, stats, workers: 2, chunkBytes: 4096 });
      expect(Buffer.compare(await readFile(join(a, 'model.safetensors')), await readFile(join(b, 'model.safetensors'))), format).toBe(0);
    }
  });
});

describe('an operator between quantize and pack', () => {
  it('reads nvfp4 codes (the kernel writes only the packed ones) and can replace them', async () => {
    const model = synthetic('llama31');
    const stats: Stats = await loadStats(join(model, 'reference.safetensors'));
    const src = await openCheckpoint(model);
    const out = join(tmp, 'operator-nvfp4');
    const zeroed = 'model.layers.1.mlp.up_proj';
    let checked = 0;
    const wrap = (unit: QuantizedUnit) => {
      for (const l of unit.linears) {
        const chunks = l.chunks.bind(l);
        l.chunks = async function* () {
          const w = await src.tensors.get(`${l.module}.weight`)!.toFloat32();
          const ref = quantizeNvfp4Ref(w, l.N, l.K, l.weightScale2!);
          for await (const c of chunks()) {
            const n = c.rows * l.K;
            expect(Buffer.compare(c.codes as Uint8Array, ref.codes.subarray(c.row0 * l.K, c.row0 * l.K + n))).toBe(0);
            checked++;
            if (l.module === zeroed) {
              c.codes = new Uint8Array(n).fill(0x9); // -0.5 everywhere
              c.packed = undefined; // pack() packs the new codes itself
            }
            yield c;
          }
        };
      }
      return unit;
    };
    await lastValueFrom(readCheckpoint(model).pipe(quantize('nvfp4', { stats, workers: 0 }), map(wrap), pack(), writeShards(out)));
    await src.close();
    expect(checked).toBeGreaterThan(0);
    const ck = await openCheckpoint(out);
    const w = await ck.tensors.get(`${zeroed}.weight`)!.read();
    expect(w.every((b) => b === 0x99)).toBe(true);
    await ck.close();
  });
});
