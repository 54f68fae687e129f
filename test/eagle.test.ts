/**
 * EAGLE drafts (spec families.md §7.2) for the stories260K target: fixtures made here (seeded bf16
 * weights): an EAGLE-3 draft reading the outputs of target layers 0, 2 and 3 with its own
 * 256-token vocabulary (lm_head, d2t), and an EAGLE-1 style two-layer draft stored with the EAGLE
 * authors' `midlayer.` names and no lm_head. The draft's inputs are computed in the test from
 * transformers' hidden states of the target (../shared/data/reference/stories260K: hidden_states.k is
 * layer k-1's output, hidden_states.5 the final normed state), with the draft's first step written
 * out plainly (RMSNorm, RoPE, causal GQA, SwiGLU) in f64.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { mkdtemp, readFile, readdir, rm, writeFile, rename, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openCheckpoint, openModel, type Stats } from '../src/index.js';
import { calibrateEagle, exportEagleDraft, openEagleDraft } from '../src/eagle.js';
import { verifyExport } from '../src/verify.js';
import { SafetensorsFile } from '../src/safetensors/file.js';
import { decodeToFloat32, encodeFromFloat32, f32Bits, roundToDType } from '../src/codecs/float.js';
import { planShards, ShardWriter } from '../src/safetensors/writer.js';
import { quantizeFp8Ref } from '../src/formats/fp8.js';
import { amaxOf } from '../src/formats/common.js';
import { REF, ROOT, STORIES } from './helpers.js';
import { inputIds } from './reference-forward.js';

const run = promisify(execFile);
const CLI = join(ROOT, 'bin', 'rxquant.js');
const REFERENCE = join(REF, 'stories260K', 'calib16x256.safetensors');
const H = 64, I = 128, NH = 8, NKV = 4, D = 8, DRAFT_VOCAB = 256, AUX = [0, 2, 3];
let tmp: string;
let eagle3: string;
let eagle1: string;
const w3 = new Map<string, { data: Float32Array; shape: number[] }>();
const w1 = new Map<string, { data: Float32Array; shape: number[] }>();
const d2t = BigInt64Array.from({ length: DRAFT_VOCAB }, (_, i) => BigInt((i * 7) % 100));

const DRAFT_CONFIG = {
  architectures: ['LlamaForCausalLMEagle3'],
  model_type: 'llama',
  hidden_size: H,
  intermediate_size: I,
  num_hidden_layers: 1,
  num_attention_heads: NH,
  num_key_value_heads: NKV,
  head_dim: D,
  vocab_size: 512,
  draft_vocab_size: DRAFT_VOCAB,
  rms_norm_eps: 1e-5,
  rope_theta: 10000.0,
  max_position_embeddings: 512,
  hidden_act: 'silu',
  torch_dtype: 'bfloat16',
  eagle_config: { eagle_aux_hidden_state_layer_ids: AUX, use_aux_hidden_state: true, use_input_layernorm_in_first_layer: true, use_last_layernorm: true, use_mtp_layernorm: false },
};

/** Writes a draft folder: config.json and model.safetensors of bf16 `weights` (plus d2t when given). */
async function writeDraft(to: string, config: Record<string, unknown>, weights: Map<string, { data: Float32Array; shape: number[] }>, withD2t: boolean): Promise<void> {
  await mkdir(to, { recursive: true });
  await writeFile(join(to, 'config.json'), JSON.stringify(config, null, 2));
  const specs = [...weights].map(([name, t]) => ({ name, dtype: 'BF16' as const, shape: t.shape }));
  if (withD2t) specs.push({ name: 'd2t', dtype: 'I64' as never, shape: [DRAFT_VOCAB] });
  const staged = join(to, 'staged');
  const w = await ShardWriter.create(staged, planShards(specs, 1e12));
  for (const [name, t] of weights) await w.write(name, encodeFromFloat32(t.data, 'BF16'));
  if (withD2t) await w.write('d2t', new Uint8Array(d2t.buffer));
  await w.finish();
  await rename(join(staged, 'model.safetensors'), join(to, 'model.safetensors'));
  await rm(staged, { recursive: true, force: true });
}

beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'rxq-eagle-'));
  let seed = 11;
  const rnd = (n: number, scale: number, around = 0) =>
    Float32Array.from({ length: n }, () => roundToDType(around + ((seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0) / 2 ** 32 - 0.5) * scale, 'BF16'));
  const layer = (w: Map<string, { data: Float32Array; shape: number[] }>, p: string, K: number) => {
    w.set(`${p}.self_attn.q_proj.weight`, { data: rnd(NH * D * K, 0.3), shape: [NH * D, K] });
    w.set(`${p}.self_attn.k_proj.weight`, { data: rnd(NKV * D * K, 0.3), shape: [NKV * D, K] });
    w.set(`${p}.self_attn.v_proj.weight`, { data: rnd(NKV * D * K, 0.3), shape: [NKV * D, K] });
    w.set(`${p}.self_attn.o_proj.weight`, { data: rnd(H * NH * D, 0.3), shape: [H, NH * D] });
    w.set(`${p}.mlp.gate_proj.weight`, { data: rnd(I * H, 0.3), shape: [I, H] });
    w.set(`${p}.mlp.up_proj.weight`, { data: rnd(I * H, 0.3), shape: [I, H] });
    w.set(`${p}.mlp.down_proj.weight`, { data: rnd(H * I, 0.3), shape: [H, I] });
    w.set(`${p}.input_layernorm.weight`, { data: rnd(H, 0.5, 1), shape: [H] });
    w.set(`${p}.post_attention_layernorm.weight`, { data: rnd(H, 0.5, 1), shape: [H] });
  };
  layer(w3, 'layers.0', 2 * H);
  w3.set('layers.0.hidden_norm.weight', { data: rnd(H, 0.5, 1), shape: [H] });
  w3.set('fc.weight', { data: rnd(H * AUX.length * H, 0.2), shape: [H, AUX.length * H] });
  w3.set('norm.weight', { data: rnd(H, 0.5, 1), shape: [H] });
  w3.set('lm_head.weight', { data: rnd(DRAFT_VOCAB * H, 0.2), shape: [DRAFT_VOCAB, H] });
  eagle3 = join(tmp, 'eagle3');
  await writeDraft(eagle3, DRAFT_CONFIG, w3, true);
  // EAGLE-1 style: no aux states, two plain layers, the authors' `midlayer` name for layer 0, no lm_head
  layer(w1, 'midlayer', H);
  layer(w1, 'layers.1', H);
  eagle1 = join(tmp, 'eagle1');
  await writeDraft(
    eagle1,
    { ...DRAFT_CONFIG, num_hidden_layers: 2, draft_vocab_size: 512, eagle_config: { use_aux_hidden_state: false, use_last_layernorm: false } },
    w1,
    false,
  );
});
afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});

// ---- the draft's first step, plainly (f64), from transformers' target states ----

function rms(x: Float64Array | Float32Array, T: number, w: Float32Array, eps = 1e-5): Float64Array {
  const out = new Float64Array(T * H);
  for (let t = 0; t < T; t++) {
    let s = 0;
    for (let k = 0; k < H; k++) s += x[t * H + k]! ** 2;
    const r = 1 / Math.sqrt(s / H + eps);
    for (let k = 0; k < H; k++) out[t * H + k] = x[t * H + k]! * r * w[k]!;
  }
  return out;
}
function linear(x: Float64Array | Float32Array, T: number, K: number, w: Float32Array, N: number): Float64Array {
  const y = new Float64Array(T * N);
  for (let t = 0; t < T; t++)
    for (let n = 0; n < N; n++) {
      let s = 0;
      for (let k = 0; k < K; k++) s += x[t * K + k]! * w[n * K + k]!;
      y[t * N + n] = s;
    }
  return y;
}
/** HF's default RoPE (theta 10000): x[i], x[i + d/2] rotated by pos / theta^(2i/d). */
function rope(x: Float64Array, T: number, heads: number): void {
  for (let t = 0; t < T; t++)
    for (let h = 0; h < heads; h++)
      for (let i = 0; i < D / 2; i++) {
        const a = t / 10000 ** ((2 * i) / D), o = (t * heads + h) * D;
        const x1 = x[o + i]!, x2 = x[o + i + D / 2]!;
        x[o + i] = x1 * Math.cos(a) - x2 * Math.sin(a);
        x[o + i + D / 2] = x2 * Math.cos(a) + x1 * Math.sin(a);
      }
}
function causalAttention(q: Float64Array, k: Float64Array, v: Float64Array, T: number): Float64Array {
  const out = new Float64Array(T * NH * D);
  for (let h = 0; h < NH; h++) {
    const g = Math.floor(h / (NH / NKV));
    for (let i = 0; i < T; i++) {
      const s: number[] = [];
      for (let j = 0; j <= i; j++) {
        let d = 0;
        for (let c = 0; c < D; c++) d += q[(i * NH + h) * D + c]! * k[(j * NKV + g) * D + c]!;
        s.push(d / Math.sqrt(D));
      }
      const m = Math.max(...s), e = s.map((x) => Math.exp(x - m)), z = e.reduce((a, b) => a + b, 0);
      for (let j = 0; j <= i; j++) for (let c = 0; c < D; c++) out[(i * NH + h) * D + c] = out[(i * NH + h) * D + c]! + (e[j]! / z) * v[(j * NKV + g) * D + c]!;
    }
  }
  return out;
}
const amax = (x: ArrayLike<number>) => {
  let m = 0;
  for (let i = 0; i < x.length; i++) m = Math.max(m, Math.abs(x[i]!));
  return m;
};
const silu = (x: number) => x / (1 + Math.exp(-x));

/**
 * One draft layer over x [T, H]; `first`: EAGLE-3's layer 0, whose attention reads
 * cat(input_layernorm(e), hidden_norm(input_layernorm(x))). Records each linear's input amax.
 */
function draftLayer(w: Map<string, { data: Float32Array }>, p: string, x: Float64Array, e: Float64Array | undefined, T: number, seen: Map<string, number>): Float64Array {
  const W = (n: string) => w.get(`${p}.${n}.weight`)!.data;
  const note = (m: string, v: ArrayLike<number>) => seen.set(`${p}.${m}`, Math.max(seen.get(`${p}.${m}`) ?? 0, amax(v)));
  let a: Float64Array, K = H;
  if (e) {
    const eN = rms(e, T, W('input_layernorm')), xN = rms(rms(x, T, W('input_layernorm')), T, W('hidden_norm'));
    a = new Float64Array(T * 2 * H);
    for (let t = 0; t < T; t++) {
      a.set(eN.subarray(t * H, (t + 1) * H), t * 2 * H);
      a.set(xN.subarray(t * H, (t + 1) * H), t * 2 * H + H);
    }
    K = 2 * H;
  } else a = rms(x, T, W('input_layernorm'));
  for (const m of ['q_proj', 'k_proj', 'v_proj']) note(`self_attn.${m}`, a);
  const q = linear(a, T, K, W('self_attn.q_proj'), NH * D), k = linear(a, T, K, W('self_attn.k_proj'), NKV * D), v = linear(a, T, K, W('self_attn.v_proj'), NKV * D);
  rope(q, T, NH);
  rope(k, T, NKV);
  const att = causalAttention(q, k, v, T);
  note('self_attn.o_proj', att);
  const o = linear(att, T, NH * D, W('self_attn.o_proj'), H);
  const h = Float64Array.from(x, (v, i) => v + o[i]!);
  const x2 = rms(h, T, W('post_attention_layernorm'));
  note('mlp.gate_proj', x2);
  note('mlp.up_proj', x2);
  const g = linear(x2, T, H, W('mlp.gate_proj'), I), u = linear(x2, T, H, W('mlp.up_proj'), I);
  const act = Float64Array.from(g, (v, i) => silu(v) * u[i]!);
  note('mlp.down_proj', act);
  const dn = linear(act, T, I, W('mlp.down_proj'), H);
  return Float64Array.from(h, (v, i) => v + dn[i]!);
}

/** transformers' target states for every calibration sample: hidden_states.k [16, 256, 64]. */
async function targetStates(): Promise<{ hs: Float32Array[]; samples: number; T: number }> {
  const ck = await openCheckpoint(REFERENCE);
  const hs = [];
  for (let k = 0; k <= 5; k++) {
    const t = ck.tensors.get(`hidden_states.${k}`)!;
    hs.push(decodeToFloat32(await t.read(), t.dtype));
  }
  const [S, T] = ck.tensors.get('hidden_states.0')!.shape as [number, number];
  await ck.close();
  return { hs, samples: S, T };
}

const rel = (a: number, b: number) => Math.abs(a - b) / Math.max(Math.abs(b), 1e-12);

describe('EAGLE drafts', () => {
  let samples: number[][];
  let stats3: Stats;
  beforeAll(async () => {
    samples = await inputIds(REFERENCE);
    const target = await openModel(STORIES);
    const draft = await openEagleDraft(eagle3, target);
    try {
      stats3 = await calibrateEagle(draft, target, samples);
    } finally {
      await draft.model.close(); // closes the target too
    }
  });

  it('EAGLE-3 calibration: fc, every draft linear and lm_head see what the plain first step on transformers states gives (within 1e-4)', async () => {
    const { hs, samples: S, T } = await targetStates();
    const seen = new Map<string, number>();
    for (let s = 0; s < S; s++) {
      const at = (k: number) => hs[k]!.subarray(s * T * H, (s + 1) * T * H);
      // fc's input: the aux layers' outputs side by side; e: the embeddings rolled left by one token
      const aux = new Float64Array(T * AUX.length * H);
      for (let t = 0; t < T; t++) AUX.forEach((l, j) => aux.set(at(l + 1).subarray(t * H, (t + 1) * H), t * AUX.length * H + j * H));
      seen.set('fc', Math.max(seen.get('fc') ?? 0, amax(aux)));
      const e = new Float64Array(T * H);
      for (let t = 0; t < T; t++) e.set(at(0).subarray(((t + 1) % T) * H, ((t + 1) % T + 1) * H), t * H);
      const x = linear(aux, T, AUX.length * H, w3.get('fc.weight')!.data, H);
      const out = draftLayer(w3, 'layers.0', x, e, T, seen);
      seen.set('lm_head', Math.max(seen.get('lm_head') ?? 0, amax(rms(out, T, w3.get('norm.weight')!.data))));
    }
    expect(seen.size).toBe(9);
    for (const [m, want] of seen) expect(rel(stats3.get(`${m}.input_amax`)![0]!, want), m).toBeLessThan(1e-4);
  });

  it('fp8: one model.safetensors without metadata, every draft linear by the formulas, config.json from the template with the nested quantization_config, draft-relative exclude_modules', async () => {
    const out = join(tmp, 'fp8');
    const done = await exportEagleDraft({ draft: eagle3, base: STORIES, format: 'fp8', out, stats: stats3, workers: 0 });
    expect(done.shards.shards.length).toBe(1);
    expect((await readdir(out)).sort()).toEqual(['config.json', 'hf_quant_config.json', 'model.safetensors']);
    const file = await SafetensorsFile.open(join(out, 'model.safetensors'));
    expect(file.metadata).toBeUndefined();
    await file.close();
    const ex = await openCheckpoint(out);
    const f32Of = async (name: string) => decodeToFloat32(await ex.tensors.get(name)!.read(), ex.tensors.get(name)!.dtype);
    const linears = ['fc', ...['q', 'k', 'v', 'o'].map((r) => `layers.0.self_attn.${r}_proj`), ...['gate', 'up', 'down'].map((r) => `layers.0.mlp.${r}_proj`)];
    for (const m of linears) {
      const w = w3.get(`${m}.weight`)!.data;
      const scale = Math.fround(amaxOf(w) / 448);
      expect((await f32Of(`${m}.weight_scale`))[0], m).toBe(scale);
      expect(ex.tensors.get(`${m}.weight`)!.dtype).toBe('F8_E4M3');
      expect(Buffer.compare(await ex.tensors.get(`${m}.weight`)!.read(), quantizeFp8Ref(w, scale, 'BF16')), m).toBe(0);
      expect(f32Bits((await f32Of(`${m}.input_scale`))[0]!)).toBe(f32Bits(Math.fround(stats3.get(`${m}.input_amax`)![0]! / 448)));
    }
    // everything else as the draft holds it (ModelOpt's allowed keys only)
    const copied = [...w3.keys()].filter((n) => !linears.includes(n.replace(/\.weight$/, '')));
    for (const n of copied) expect(Array.from(await f32Of(n)), n).toEqual(Array.from(w3.get(n)!.data));
    expect(Buffer.compare(await ex.tensors.get('d2t')!.read(), new Uint8Array(d2t.buffer))).toBe(0);
    expect(ex.tensors.size).toBe(linears.length * 3 + copied.length + 1);
    await ex.close();
    const hq = JSON.parse(await readFile(join(out, 'hf_quant_config.json'), 'utf8'));
    expect(hq.quantization).toEqual({ quant_algo: 'FP8', kv_cache_quant_algo: 'FP8', exclude_modules: ['lm_head'] });
    const cfg = JSON.parse(await readFile(join(out, 'config.json'), 'utf8'));
    expect(cfg.quantization_config).toEqual(hq); // nested, as ModelOpt's EAGLE exporter writes it
    expect(cfg.architectures).toEqual(['LlamaForCausalLMEagle3']);
    expect(cfg.eagle_config).toEqual({ eagle_aux_hidden_state_layer_ids: AUX, use_aux_hidden_state: true, use_input_layernorm_in_first_layer: true, use_last_layernorm: true, use_mtp_layernorm: false, next_layer_regular: true, parallel_draft_step: null, parallel_draft_heads_num_layers: null });
    expect(Object.keys(cfg).slice(0, 4)).toEqual(['architectures', 'bos_token_id', 'eos_token_id', 'hidden_act']);
    // from the draft, else the target (bos/eos are only in the target's config), else null
    expect([cfg.hidden_size, cfg.draft_vocab_size, cfg.bos_token_id, cfg.eos_token_id, cfg.tie_word_embeddings, cfg.rope_scaling]).toEqual([H, DRAFT_VOCAB, 1, 2, false, null]);
    const report = await verifyExport(out);
    expect(report.failures).toEqual([]);
    expect(report.eagle).toEqual({ layers: 1, linears: 8, quantized: 8, aux: AUX });
  });

  it('nvfp4 exports too (fc, 2H-wide q/k/v), and an AWQ format is refused before any work', async () => {
    const out = join(tmp, 'nvfp4');
    await exportEagleDraft({ draft: eagle3, base: STORIES, format: 'nvfp4', out, stats: stats3, workers: 0 });
    expect((await verifyExport(out)).failures).toEqual([]);
    await expect(exportEagleDraft({ draft: eagle3, base: STORIES, format: 'int4_awq', out: join(tmp, 'awq'), stats: stats3, workers: 0 })).rejects.toThrow(/int4_awq is not available for EAGLE-3 draft.*use fp8/);
  });

  it('an EAGLE-1 style draft (no aux states): midlayer read as layers.0, the target\'s tied embedding exported as lm_head, layer 0 reads the target\'s final normed state', async () => {
    const out = join(tmp, 'eagle1-fp8');
    const notes: string[] = [];
    await exportEagleDraft({ draft: eagle1, base: STORIES, format: 'fp8', out, calibration: samples, workers: 0, onNote: (n) => notes.push(n) });
    expect(notes.join('\n')).toMatch(/no lm_head: the target's \(model\.embed_tokens\.weight\)/);
    const ex = await openCheckpoint(out);
    expect(ex.tensors.get('layers.0.self_attn.q_proj.weight')!.dtype).toBe('F8_E4M3');
    expect([...ex.tensors.keys()].some((n) => n.startsWith('midlayer'))).toBe(false);
    const emb = await openCheckpoint(STORIES);
    expect(Buffer.compare(await ex.tensors.get('lm_head.weight')!.read(), await emb.tensors.get('model.embed_tokens.weight')!.read())).toBe(0);
    await emb.close();
    // q_proj's input_scale: amax(input_layernorm(hidden_states.5)) / 448 over all samples
    const { hs } = await targetStates();
    const want = amax(rms(hs[5]!, hs[5]!.length / H, w1.get('midlayer.input_layernorm.weight')!.data));
    const got = decodeToFloat32(await ex.tensors.get('layers.0.self_attn.q_proj.input_scale')!.read(), 'F32')[0]! * 448;
    expect(rel(got, want)).toBeLessThan(1e-4);
    await ex.close();
    const cfg = JSON.parse(await readFile(join(out, 'config.json'), 'utf8'));
    expect(cfg.eagle_config.use_aux_hidden_state).toBe(false);
    expect(cfg.eagle_config.eagle_aux_hidden_state_layer_ids).toBe(null);
  });

  it('bad inputs are refused before any work, with the reason', async () => {
    const target = await openModel(STORIES);
    try {
      await expect(openModel(eagle3)).rejects.toThrow(/an EAGLE draft.*--base TARGET/);
      const bad = async (name: string, config: Record<string, unknown>, weights = w3, withD2t = true) => {
        const dir = join(tmp, name);
        await writeDraft(dir, config, weights, withD2t);
        return openEagleDraft(dir, target).then(async (d) => {
          await d.model.checkpoint.close();
          return 'opened';
        });
      };
      await expect(bad('wide', { ...DRAFT_CONFIG, hidden_size: 128 })).rejects.toThrow(/hidden_size 128 differs from its target's 64/);
      await expect(bad('aux-range', { ...DRAFT_CONFIG, eagle_config: { ...DRAFT_CONFIG.eagle_config, eagle_aux_hidden_state_layer_ids: [0, 2, 9] } })).rejects.toThrow(/distinct target layers 0\.\.4/);
      await expect(bad('aux-count', { ...DRAFT_CONFIG, eagle_config: { ...DRAFT_CONFIG.eagle_config, eagle_aux_hidden_state_layer_ids: [0, 2] } })).rejects.toThrow(/"fc\.weight" has shape \[64, 192\], expected \[64, 128\]/);
      const extra = new Map(w3);
      extra.set('layers.0.self_attn.rotary_emb.inv_freq', { data: new Float32Array(4), shape: [4] });
      await expect(bad('extra', DRAFT_CONFIG, extra)).rejects.toThrow(/"layers\.0\.self_attn\.rotary_emb\.inv_freq" is not part of an EAGLE draft/);
      await expect(bad('no-d2t', DRAFT_CONFIG, w3, false)).rejects.toThrow(/"d2t" is missing/);
    } finally {
      await target.close();
    }
  });

  it('CLI: quantize DRAFT --base TARGET calibrates through the target; a draft without --base, or --base on a plain model, is refused', async () => {
    const calib = join(ROOT, 'assets', 'text', 'tinystories_calib.txt');
    const out = join(tmp, 'cli');
    const { stdout } = await run('node', [CLI, 'quantize', eagle3, '--base', STORIES, '--format', 'fp8', '--calib', calib, '--calib-samples', '4', '--calib-seq-len', '64', '--out', out]);
    expect(stdout).toMatch(/EAGLE draft, format fp8/);
    expect((await verifyExport(out)).failures).toEqual([]);
    const fail = (args: string[]) => run('node', [CLI, ...args]).then(() => 'ok', (e: { code: number; stderr: string }) => `${e.code}: ${e.stderr}`);
    expect(await fail(['quantize', eagle3, '--format', 'fp8', '--out', join(tmp, 'x')])).toMatch(/^2: .*is an EAGLE draft: name the model it drafts for with --base TARGET/s);
    expect(await fail(['quantize', STORIES, '--base', STORIES, '--format', 'fp8', '--out', join(tmp, 'y')])).toMatch(/^2: .*--base is for EAGLE drafts/s);
    // verify says what the draft is; eval refuses a draft (it has no perplexity without its target)
    const ver = await run('node', [CLI, 'verify', out]);
    expect(ver.stdout).toMatch(/EAGLE draft: 1 layer\(s\), 8 of 8 linears quantized, reads target layers 0, 2, 3/);
    expect(await fail(['eval', out, '--text', calib])).toMatch(/^2: .*is an EAGLE draft: .* no perplexity of its own/s);
    // plan: the draft as it will be written (one file), calibration timed on the target; inspect names the draft
    const plan = await run('node', [CLI, 'plan', eagle3, '--base', STORIES, '--format', 'fp8', '--calib-samples', '4', '--out', join(tmp, 'p')]);
    expect(plan.stdout).toMatch(/linears: 8 quantized, 0 kept/);
    expect(plan.stdout).toMatch(/in 1 shard\(s\):\n {2}model\.safetensors {2}30 tensors/);
    expect(plan.stdout).toMatch(/through 5 layers of the target and the draft/);
    expect(await fail(['plan', eagle3, '--format', 'fp8'])).toMatch(/^2: .*is an EAGLE draft/s);
    const ins = await run('node', [CLI, 'inspect', eagle3]);
    expect(ins.stdout).toMatch(/EAGLE draft \{"eagle_aux_hidden_state_layer_ids":\[0,2,3\].*--base TARGET/);
    // the output may be neither the draft nor the target
    expect(await fail(['quantize', eagle3, '--base', STORIES, '--format', 'fp8', '--out', eagle3])).toMatch(/^1: .*is the source model.*refusing to write there/s);
    expect(await fail(['quantize', eagle3, '--base', STORIES, '--format', 'fp8', '--out', join(STORIES, 'sub')])).toMatch(/^1: .*the --base target model.*refusing to write there/s);
  });
});
