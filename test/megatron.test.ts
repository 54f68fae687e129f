/**
 * Megatron-Core torch_dist input (spec megatron.md): the two fixtures of ../shared/data/reference/megatron
 * (made by Megatron's own save code from the llama31 reference model; TP=1 with common.pt, TP=2 with a
 * padded vocabulary and the common state inside) read as HF tensors must equal, byte for byte, the
 * HF checkpoint they were made from; bad inputs are one clear error naming the file and the key.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cp, mkdtemp, readFile, rm, truncate, writeFile, chmod, readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FORMAT_NAMES, openCheckpoint, openModel } from '../src/index.js';
import { exportCheckpoint } from '../src/export-checkpoint.js';
import { loadStats } from '../src/export/stats.js';
import { openDcp, resolveTorchDist } from '../src/sources/dcp.js';
import { unpickle } from '../src/sources/pickle.js';
import { REF, ROOT, synthetic } from './helpers.js';

const HF = synthetic('llama31');
const TP1 = join(REF, 'megatron', 'llama31_torch_dist');
const TP2 = join(REF, 'megatron', 'llama31_torch_dist_tp2');
let tmp: string;
beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'rxq-megatron-'));
});
afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});

/** A writable copy of a fixture (files made writable, so a test can damage them). */
async function copyOf(fixture: string, name: string): Promise<string> {
  const to = join(tmp, name);
  await cp(fixture, to, { recursive: true });
  const fix = async (d: string) => {
    await chmod(d, 0o755);
    for (const e of await readdir(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) await fix(p);
      else await chmod(p, 0o644);
    }
  };
  await fix(to);
  return to;
}

describe('torch_dist checkpoints read as the HF tensors', () => {
  it.each([
    ['TP=1 (common.pt)', TP1],
    ['TP=2 (padded vocabulary, common state inside)', TP2],
  ])('%s: every tensor of the HF checkpoint, byte for byte, and nothing else', async (_, dir) => {
    const hf = await openCheckpoint(HF);
    const m = await openModel(dir, { hfConfig: HF });
    try {
      expect([...m.tensors.keys()].sort()).toEqual([...hf.tensors.keys()].sort());
      for (const [name, t] of hf.tensors) {
        const got = m.tensors.get(name)!;
        expect([got.dtype, [...got.shape]], name).toEqual([t.dtype, [...t.shape]]);
        expect(Buffer.compare(await got.read(), await t.read()), name).toBe(0);
        // rows read a part at a time (as the export reads them) are the same bytes
        if (t.rows > 3) expect(Buffer.compare(await got.readRows(1, 3), await t.readRows(1, 3)), name).toBe(0);
      }
      expect(m.configDir).toBe(HF);
      if (dir === TP2) expect(m.notes.join('\n')).toMatch(/640 rows .* trimmed to vocab_size 512/);
    } finally {
      await m.close();
      await hf.close();
    }
  });

  it('the save folder resolves through latest_checkpointed_iteration.txt; .metadata is parsed symbolically', async () => {
    expect(await resolveTorchDist(TP1)).toBe(join(TP1, 'iter_0000001'));
    const dcp = await openDcp(join(TP1, 'iter_0000001'));
    try {
      expect(dcp.tensors.get('decoder.layers.mlp.linear_fc1.weight')!.shape).toEqual([2, 512, 128]);
      expect(dcp.bytesKeys.filter((k) => k.includes('_extra_state')).length).toBe(10);
    } finally {
      await dcp.close();
    }
    const tp2 = await openDcp(join(TP2, 'iter_0000001'));
    try {
      expect(tp2.tensors.get('embedding.word_embeddings.weight')!.shape).toEqual([640, 128]);
      // the common state (Megatron-Core >= 0.19): a bytes item holding [dict] with the args Namespace
      const common = await tp2.readBytesItem('common_state/shard_0_1');
      expect(common instanceof Map && common.get('iteration')).toBe(1);
    } finally {
      await tp2.close();
    }
  });

  it('an export from the Megatron checkpoint is byte-identical to the export of the HF model, in every format', async () => {
    const stats = await loadStats(join(HF, 'reference.safetensors'));
    for (const format of FORMAT_NAMES) {
      const a = join(tmp, `hf-${format}`);
      await exportCheckpoint({ model: HF, format, out: a, stats, workers: 0 });
      for (const [label, fixture] of [['tp1', TP1], ['tp2', TP2]] as const) {
        const b = join(tmp, `mg-${label}-${format}`);
        await exportCheckpoint({ model: fixture, hfConfig: HF, format, out: b, stats, workers: 0 });
        const files = (await readdir(a)).sort();
        expect((await readdir(b)).sort()).toEqual(files);
        for (const f of files) expect(Buffer.compare(await readFile(join(a, f)), await readFile(join(b, f))), `${label} ${format} ${f}`).toBe(0);
      }
    }
  });
});

describe('other torch_dist layouts (written here by the bench writer from the llama31 HF checkpoint)', () => {
  it.each([
    ['per-layer keys (decoder.layers.{l}.*, as heterogeneous stacks save them)', { perLayer: true }],
    ["NeMo 2: weights/ folder, every key under module.", { folder: 'nemo2', prefix: 'module.' }],
    ['a save folder whose tracker says release', { folder: 'release' }],
  ] as const)('%s: every HF tensor byte-identical', async (_, layout) => {
    const { writeTorchDist } = await import('../bench/megatron.js');
    const dir = join(tmp, `layout-${Object.values(layout).join('-')}`);
    await writeTorchDist(HF, dir, 2, layout);
    const hf = await openCheckpoint(HF);
    const m = await openModel(dir, { hfConfig: HF });
    try {
      expect([...m.tensors.keys()].sort()).toEqual([...hf.tensors.keys()].sort());
      for (const [name, t] of hf.tensors) expect(Buffer.compare(await m.tensors.get(name)!.read(), await t.read()), name).toBe(0);
    } finally {
      await m.close();
      await hf.close();
    }
  });
});

describe('bad torch_dist input: one clear error naming the file and the key', () => {
  it('a chunk missing from .metadata storage_data, a truncated .distcp, a config that does not match, an unknown opcode', async () => {
    // a truncated data file, a lost rank's file: refused at open, naming the file and a key in it
    const cut = await copyOf(TP1, 'cut');
    await truncate(join(cut, 'iter_0000001', '__0_0.distcp'), 400_000);
    await expect(openModel(cut, { hfConfig: HF })).rejects.toThrow(/__0_0\.distcp: truncated: 400000 bytes, but \.metadata places "[\w.]+" up to byte 895187/);
    const lost = await copyOf(TP2, 'lost');
    await rm(join(lost, 'iter_0000001', '__1_0.distcp'));
    await expect(openModel(lost, { hfConfig: HF })).rejects.toThrow(/__1_0\.distcp: missing: \.metadata places chunks of "[\w.]+" and others in it/);

    // a config whose sizes disagree with the tensors: the key and the config are named
    const cfg = JSON.parse(await readFile(join(HF, 'config.json'), 'utf8'));
    const wrong = join(tmp, 'wrong-config');
    await cp(HF, wrong, { recursive: true });
    await chmod(join(wrong, 'config.json'), 0o644).catch(() => undefined);
    await writeFile(join(wrong, 'config.json'), JSON.stringify({ ...cfg, intermediate_size: 384 }));
    await expect(openModel(TP1, { hfConfig: wrong })).rejects.toThrow(/linear_fc1\.weight" has shape \[2, 512, 128\], expected \[2, 768, 128\]/);

    // a damaged item: the archive's central directory overwritten, read when the chunk is
    const bad = await copyOf(TP1, 'bad');
    const data = join(bad, 'iter_0000001', '__0_0.distcp');
    const bytes = await readFile(data);
    bytes.fill(0, 895187 - 200, 895187); // the tail of the last item (output_layer.weight)
    await writeFile(data, bytes);
    const m = await openModel(bad, { hfConfig: HF });
    await expect(m.tensors.get('lm_head.weight')!.read()).rejects.toThrow(/__0_0\.distcp \(output_layer\.weight at \[0, 0\]\): not a torch\.save archive: no end-of-central-directory record/);
    await m.close();

    // an opcode outside the ones torch writes
    expect(() => unpickle(Uint8Array.of(0x80, 0x02, 0x49, 0x31, 0x0a, 0x2e), undefined, 'x.pkl')).toThrow(/x\.pkl: unsupported opcode 0x49 \(at byte 2\)/);
    // a folder that is not a torch_dist checkpoint
    await expect(openModel(HF, { hfConfig: HF })).rejects.toThrow(/not a torch_dist checkpoint folder/);
  });
});

describe('rxquant with --hf-config', () => {
  it('quantize, plan and inspect take a Megatron checkpoint; the export equals the one from the HF folder', async () => {
    const { execFile } = await import('node:child_process');
    const { promisify } = await import('node:util');
    const run = (args: string[]) => promisify(execFile)('node', [join(ROOT, 'bin', 'rxquant.js'), ...args]);
    const stats = join(HF, 'reference.safetensors');
    const a = join(tmp, 'cli-hf'), b = join(tmp, 'cli-mg');
    await run(['quantize', HF, '-f', 'fp8', '--stats', stats, '-o', a]);
    const q = await run(['quantize', TP2, '--hf-config', HF, '-f', 'fp8', '--stats', stats, '-o', b]);
    expect(q.stdout).toMatch(/640 rows .* trimmed to vocab_size 512/);
    const files = (await readdir(a)).sort();
    expect((await readdir(b)).sort()).toEqual(files);
    for (const f of files) expect(Buffer.compare(await readFile(join(a, f)), await readFile(join(b, f))), f).toBe(0);
    const plan = await run(['plan', TP1, '--hf-config', HF, '-f', 'nvfp4', '--stats', stats, '-o', join(tmp, 'plan-out')]);
    expect(plan.stdout).toMatch(/linears: 14 quantized/);
    const ins = await run(['inspect', TP1]);
    expect(ins.stdout).toMatch(/Megatron-Core torch_dist; 10 bytes items/);
    expect(ins.stdout).toMatch(/decoder\.layers\.self_attention\.linear_qkv\.weight\s+BF16\s+\[2, 256, 128\]/);
    // --hf-config pointing at a folder without config.json: one usage error
    const bad = await run(['quantize', TP1, '--hf-config', TP1, '-f', 'fp8', '-o', join(tmp, 'x')]).catch((e) => e);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(/--hf-config .*: no config\.json there/);
  }, 120_000);
});
