/** The forward pass and its statistics against Hugging Face transformers (../shared/data/reference). */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtemp, rm, writeFile, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openCheckpoint, loadStats, openModel, type Stats } from '../src/index.js';
import { calibrateModel, writeStats } from '../src/calibrate-checkpoint.js';
import { loadCalibration, loadTokenizer, encodeText } from '../src/calibration/data.js';
import { decoderLayer, prepareLayer } from '../src/forward/layer.js';
import { jsGemm, loadOrt, onnxGemm, type GemmEngine } from '../src/forward/gemm.js';
import { embed, loadHead, loadLayerWeights, weightSource } from '../src/forward/weights.js';
import { denseLayerNames } from '../src/models/dense.js';
import { ropeTables } from '../src/forward/rope.js';
import { matmul, matmulRef, rmsnorm } from '../src/forward/ops.js';
import { perplexity } from '../src/eval.js';
import { exportCheckpoint } from '../src/export-checkpoint.js';
import { CalibrationDataError } from '../src/errors.js';
import { DATA, REF, ROOT, STORIES, synthetic, DENSE_MODELS } from './helpers.js';
import { cat, expectStatsMatchReference, inputIds, relErr } from './reference-forward.js';

let tmp: string;
beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'rxq-calib-'));
});
afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});

const REFERENCE = JSON.parse(await readFile(join(DATA, 'stories260K', 'reference', 'stories260K-reference.json'), 'utf8'));
const CASES = [
  { label: 'stories260K', dir: STORIES, ref: join(REF, 'stories260K', 'calib16x256.safetensors') },
  ...DENSE_MODELS.map((a) => ({ label: a, dir: synthetic(a), ref: join(synthetic(a), 'reference.safetensors') })),
];

describe('blocked matmul equals the reference triple loop', () => {
  it('on ragged sizes', () => {
    const T = 7, K = 13, N = 5;
    const x = Float32Array.from({ length: T * K }, (_, i) => Math.sin(i));
    const w = Float32Array.from({ length: N * K }, (_, i) => Math.cos(i * 0.7));
    const b = Float32Array.from({ length: N }, (_, i) => i / 3);
    expect(relErr(matmul(x, T, K, w, N, b), matmulRef(x, T, K, w, N, b))).toBeLessThan(1e-6);
  });
});

for (const c of CASES) {
  describe(`forward pass of ${c.label} vs transformers`, () => {
    let ids: number[][];
    let ref: Stats;
    beforeAll(async () => {
      ids = await inputIds(c.ref);
      ref = await loadStats(c.ref);
    });

    for (const engine of ['js', 'onnx'] as const)
    it(`hidden states after every layer (and logits) within 1e-4 relative, ${engine} GEMM`, async () => {
      const ort = await loadOrt();
      expect(ort, 'onnxruntime-node loads').toBeDefined();
      const gemm: GemmEngine = engine === 'js' ? jsGemm : onnxGemm(ort!, 1);
      const model = await openModel(c.dir);
      const cfg = model.config;
      const src = weightSource(model.checkpoint);
      const T = ids[0]!.length;
      const { cos, sin } = ropeTables(cfg.rope, cfg.headDim, T);
      const hs = await Promise.all(ids.map((s) => embed(src, s, cfg.hiddenSize, model.arch.names)));
      expect(relErr(cat(hs), ref.get('hidden_states.0')!)).toBeLessThan(1e-6);
      let h = hs;
      for (let l = 0; l < cfg.numLayers; l++) {
        const layer = await prepareLayer(await loadLayerWeights(src, denseLayerNames(model.layers[l]!)), gemm);
        h = await Promise.all(h.map((x) => decoderLayer(x, T, layer, cfg, cos, sin)));
        await layer.release();
        if (l < cfg.numLayers - 1) expect(relErr(cat(h), ref.get(`hidden_states.${l + 1}`)!), `layer ${l}`).toBeLessThan(1e-4);
      }
      const { norm, head } = await loadHead(src, cfg, model.arch.names);
      const normed = h.map((x) => rmsnorm(x, T, cfg.hiddenSize, norm, cfg.rmsNormEps));
      expect(relErr(cat(normed), ref.get(`hidden_states.${cfg.numLayers}`)!)).toBeLessThan(1e-4);
      if (ref.has('logits')) {
        const prepared = await gemm.prepare(head);
        const logits = cat(await Promise.all(normed.map((x) => prepared.run(x, T))));
        expect(relErr(logits, ref.get('logits')!)).toBeLessThan(1e-4);
      }
      await model.close();
    });

    it('input_amax and input_absmean of every linear within 1e-4 relative', async () => {
      const stats = await calibrateModel(c.dir, ids); // default engine: onnxruntime
      const checked = expectStatsMatchReference(stats, ref);
      expect(checked).toBeGreaterThanOrEqual(14 * 2);
      // post-RoPE K/V amax is reported per attention module, positive
      expect(stats.get('model.layers.0.self_attn.k_amax')![0]).toBeGreaterThan(0);
    });
  });
}

describe('stories260K against its reference JSON', () => {
  it('prompt logits within 1e-4 absolute', async () => {
    const model = await openModel(STORIES);
    const cfg = model.config;
    const src = weightSource(model.checkpoint);
    const ids: number[] = REFERENCE.prompt_logits.prompt_ids;
    const { cos, sin } = ropeTables(cfg.rope, cfg.headDim, ids.length);
    let h = await embed(src, ids, cfg.hiddenSize, model.arch.names);
    for (const layout of model.layers) h = await decoderLayer(h, ids.length, await prepareLayer(await loadLayerWeights(src, denseLayerNames(layout))), cfg, cos, sin);
    const { norm, head } = await loadHead(src, cfg, model.arch.names);
    const logits = matmul(rmsnorm(h, ids.length, cfg.hiddenSize, norm, cfg.rmsNormEps), ids.length, head.K, head.w, head.N);
    const want: number[][] = REFERENCE.prompt_logits.logits;
    let worst = 0;
    want.forEach((row, t) => row.forEach((v, j) => (worst = Math.max(worst, Math.abs(v - logits[t * head.N + j]!)))));
    expect(worst).toBeLessThan(1e-4);
    await model.close();
  });

  it('tokenizes the TinyStories file exactly as the reference (393,018 ids, same sum)', async () => {
    const tok = await loadTokenizer(STORIES);
    const ids = encodeText(tok, await readFile(join(DATA, 'text', 'tinystories_valid_excerpt.txt'), 'utf8'));
    expect(ids.length).toBe(REFERENCE.tinystories_file_tokenization.num_tokens);
    expect(ids.reduce((a, b) => a + b, 0)).toBe(REFERENCE.tinystories_file_tokenization.sum_ids);
    for (const c of REFERENCE.tokenizer_cases) expect([1, ...encodeText(tok, c.text)]).toEqual(c.ids_with_bos);
  });

  it('perplexity protocol: the first 6 windows match the reference per-window mean NLL', async () => {
    const r = await perplexity(STORIES, join(DATA, 'text', 'tinystories_valid_excerpt.txt'), { maxWindows: 6 });
    const want: number[] = REFERENCE.perplexity.window_mean_nll.slice(0, 6);
    const wantMean = want.reduce((a, b) => a + b * 511, 0) / (6 * 511);
    expect(r.tokens).toBe(6 * 511);
    expect(Math.abs(r.meanNll - wantMean)).toBeLessThan(1e-5);
  });
});

describe('calibration data', () => {
  it('.json token ids are used exactly as given; .txt is cut into windows without BOS', async () => {
    const j = join(tmp, 'ids.json');
    await writeFile(j, JSON.stringify([[1, 2, 3], [4, 5]]));
    expect(await loadCalibration(j, STORIES, { samples: 8, seqLen: 2 })).toEqual([[1, 2, 3], [4, 5]]);
    const samples = await loadCalibration(join(DATA, 'text', 'tinystories_valid_excerpt.txt'), STORIES, { samples: 16, seqLen: 256 });
    expect(samples).toEqual(await inputIds(join(REF, 'stories260K', 'calib16x256.safetensors')));
  });
  it('.jsonl takes "text", adds BOS, truncates', async () => {
    const p = join(tmp, 'c.jsonl');
    await writeFile(p, '{"text": "Once upon a time"}\n\n{"text": "Hello world!"}\n');
    expect(await loadCalibration(p, STORIES, { samples: 8, seqLen: 4 })).toEqual([[1, 403, 407, 261], [1, 346, 306, 414]]);
  });
  it('.parquet takes the "text" column like .jsonl (file written by hyparquet-writer, snappy)', async () => {
    const { parquetWriteBuffer } = await import('hyparquet-writer');
    const p = join(tmp, 'c.parquet');
    await writeFile(p, Buffer.from(parquetWriteBuffer({ columnData: [{ name: 'id', data: [1, 2], type: 'INT32' }, { name: 'text', data: ['Once upon a time', 'Hello world!'], type: 'STRING' }] })));
    expect(await loadCalibration(p, STORIES, { samples: 8, seqLen: 4 })).toEqual([[1, 403, 407, 261], [1, 346, 306, 414]]);
    await writeFile(join(tmp, 'notext.parquet'), Buffer.from(parquetWriteBuffer({ columnData: [{ name: 'body', data: ['x'], type: 'STRING' }] })));
    await expect(loadCalibration(join(tmp, 'notext.parquet'), STORIES, { samples: 8, seqLen: 4 })).rejects.toThrow(CalibrationDataError);
  });

  it('missing, empty or malformed data is a clear error', async () => {
    await expect(loadCalibration(join(tmp, 'nope.txt'), STORIES, { samples: 1, seqLen: 8 })).rejects.toThrow(/calibration data not found/);
    await writeFile(join(tmp, 'empty.txt'), '');
    await expect(loadCalibration(join(tmp, 'empty.txt'), STORIES, { samples: 1, seqLen: 8 })).rejects.toThrow(/calibration data is empty/);
    await writeFile(join(tmp, 'bad.jsonl'), '{"txt": 1}\n');
    await expect(loadCalibration(join(tmp, 'bad.jsonl'), STORIES, { samples: 1, seqLen: 8 })).rejects.toThrow(CalibrationDataError);
    await writeFile(join(tmp, 'bad.csv'), 'a,b');
    await expect(loadCalibration(join(tmp, 'bad.csv'), STORIES, { samples: 1, seqLen: 8 })).rejects.toThrow(/unsupported calibration file type/);
  });
});

describe('quantize with inline calibration', () => {
  it('fp8 on token ids: input_scale = transformers amax / 448', async () => {
    const ids = await inputIds(join(synthetic('llama31'), 'reference.safetensors'));
    const ref = await loadStats(join(synthetic('llama31'), 'reference.safetensors'));
    const out = join(tmp, 'fp8-calib');
    await exportCheckpoint({ model: synthetic('llama31'), format: 'fp8', out, calibration: ids, workers: 0 });
    const ck = await openCheckpoint(out);
    for (const m of ['model.layers.0.self_attn.q_proj', 'model.layers.1.mlp.down_proj', 'model.layers.1.self_attn.o_proj']) {
      const got = (await ck.tensors.get(`${m}.input_scale`)!.toFloat32())[0]!;
      const want = ref.get(`${m}.input_amax`)![0]! / 448;
      expect(Math.abs(got - want) / want).toBeLessThan(1e-5);
    }
    await ck.close();
  });
  it('spilling hidden states to a temporary file past the memory budget gives the same statistics', async () => {
    const ids = await inputIds(join(REF, 'stories260K', 'calib16x256.safetensors'));
    const inMemory = await calibrateModel(STORIES, ids.slice(0, 4));
    const spilled = await calibrateModel(STORIES, ids.slice(0, 4), { memoryBudgetBytes: 1024, spillDir: tmp });
    expect(spilled.size).toBe(inMemory.size);
    for (const [k, v] of inMemory) expect(Array.from(spilled.get(k)!), k).toEqual(Array.from(v));
    expect((await import('node:fs/promises').then((f) => f.readdir(tmp))).filter((n) => n.startsWith('rxquant-hidden-'))).toEqual([]);
  });

  it('statistics round-trip through the file `calibrate --out` writes', async () => {
    const ids = await inputIds(join(synthetic('qwen2'), 'reference.safetensors'));
    const stats = await calibrateModel(synthetic('qwen2'), ids);
    const p = join(tmp, 'stats.safetensors');
    await writeStats(p, stats);
    const back = await loadStats(p);
    expect(back.size).toBe(stats.size);
    expect(Array.from(back.get('model.layers.0.mlp.up_proj.input_absmean')!)).toEqual(Array.from(stats.get('model.layers.0.mlp.up_proj.input_absmean')!));
    const ck = await openCheckpoint(p);
    expect(ck.tensors.get('model.layers.0.mlp.up_proj.input_amax')!.shape).toEqual([]);
    await ck.close();
  });
});

describe('ReusedBuffers (forward-pass intermediates kept from call to call)', () => {
  it("a call gets the previous call's buffers, an overlapping call its own, a new key new ones", async () => {
    const { ReusedBuffers } = await import('../src/forward/reused.js');
    let made = 0;
    const reuse = new ReusedBuffers((key) => ({ key, id: ++made }));
    const first = await reuse.use('a', async (b) => b);
    expect(await reuse.use('a', async (b) => b)).toBe(first);
    let release!: () => void;
    const held = reuse.use('a', (b) => new Promise<typeof b>((r) => (release = () => r(b))));
    const overlapping = await reuse.use('a', async (b) => b);
    release();
    expect(await held).toBe(first);
    expect(overlapping).not.toBe(first);
    const other = await reuse.use('b', async (b) => b);
    expect(other.key).toBe('b');
    expect(reuse.takeBack()).toBe(other);
    expect(reuse.takeBack()).toBeUndefined();
  });
});

describe('rxquant calibrate --json: progress per layer', () => {
  it('one calibrate event per layer and for the rest, with tokens/s, load time within the layer time, and the statistics of calibrateModel', async () => {
    const { execFile } = await import('node:child_process');
    const { promisify } = await import('node:util');
    const tmp = await mkdtemp(join(tmpdir(), 'rxq-calib-json-'));
    try {
      const ids = (await inputIds(join(REF, 'stories260K', 'calib16x256.safetensors'))).slice(0, 2).map((a) => a.slice(0, 64));
      await writeFile(join(tmp, 'ids.json'), JSON.stringify(ids));
      const out = join(tmp, 'stats.safetensors');
      const { stdout } = await promisify(execFile)('node', [join(ROOT, 'bin', 'rxquant.js'), 'calibrate', STORIES, '--calib', join(tmp, 'ids.json'), '-o', out, '--json']);
      const events = stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, number | string>);
      const cal = events.filter((e) => e.stage === 'calibrate');
      const layers = (await openModel(STORIES)).layers.length;
      expect(cal.map((e) => e.layer)).toEqual([...Array.from({ length: layers }, (_, i) => i), -1]);
      for (const e of cal) {
        expect(e.tokens).toBe(128);
        expect(e.tokens_per_s).toBeCloseTo((e.tokens as number) / (e.seconds as number), 6);
        if (e.layer !== -1) expect(e.load_seconds as number).toBeLessThanOrEqual(e.seconds as number);
      }
      const written = await loadStats(out);
      const direct = await calibrateModel(STORIES, ids);
      expect([...written.keys()].sort()).toEqual([...direct.keys()].sort());
      for (const [k, v] of direct) expect(Array.from(written.get(k)!)).toEqual(Array.from(v));
    } finally {
      await rm(tmp, { recursive: true, force: true });
    }
  }, 60_000);
});
