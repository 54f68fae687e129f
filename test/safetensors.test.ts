import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtemp, readFile, readdir, rm, writeFile, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SafetensorsFile, openCheckpoint, planShards, ShardWriter, parseSize, tempDirFor, INDEX_FILE } from '../src/safetensors/index.js';
import { SafetensorsFormatError, CheckpointError, OutputError } from '../src/errors.js';
import { STORIES, synthetic, DENSE_MODELS, readAll } from './helpers.js';

let tmp: string;
beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'rxq-st-'));
});
afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});

/** Builds a safetensors file from a header object and a data length. */
async function craft(name: string, header: unknown, dataBytes: number, opts: { lengthOverride?: bigint; raw?: string } = {}) {
  const json = Buffer.from(opts.raw ?? JSON.stringify(header));
  const buf = Buffer.alloc(8 + json.length + dataBytes);
  buf.writeBigUInt64LE(opts.lengthOverride ?? BigInt(json.length), 0);
  json.copy(buf, 8);
  const p = join(tmp, name);
  await writeFile(p, buf);
  return p;
}

describe('safetensors reader', () => {
  it('reads what transformers wrote: stories260K and every synthetic model', async () => {
    const all = [STORIES, ...['llama31', 'qwen2', 'qwen3', 'mistral', 'mixtral', 'qwen3_moe', 'deepseek_v3', 'llama4_text'].map(synthetic)];
    for (const dir of all) {
      const ck = await openCheckpoint(dir);
      expect(ck.tensors.size).toBeGreaterThan(5);
      await ck.close();
    }
  });

  it('reads a row range on its own into a caller-owned buffer', async () => {
    const f = await SafetensorsFile.open(join(STORIES, 'model.safetensors'));
    const t = f.tensor('model.embed_tokens.weight');
    const whole = await t.read();
    const buf = new Uint8Array(4096);
    const rows = await t.readRows(3, 5, buf);
    expect(rows.buffer).toBe(buf.buffer);
    expect(Buffer.compare(rows, whole.subarray(3 * t.rowBytes, 5 * t.rowBytes))).toBe(0);
    await f.close();
  });

  const bad: [string, unknown, number, { lengthOverride?: bigint; raw?: string }, RegExp][] = [
    ['zero-length', {}, 0, { lengthOverride: 0n }, /header length is 0/],
    ['past-end', {}, 0, { lengthOverride: 1000n }, /past the end of the file/],
    ['not-object', null, 0, { raw: '[1,2]' }, /not a JSON object/],
    ['not-json', null, 0, { raw: '{"a": ' }, /not valid UTF-8 JSON/],
    ['unknown-dtype', { a: { dtype: 'F7', shape: [1], data_offsets: [0, 1] } }, 1, {}, /tensor "a": unknown dtype "F7"/],
    ['negative-dim', { a: { dtype: 'U8', shape: [-1], data_offsets: [0, 1] } }, 1, {}, /negative or non-integer/],
    ['fraction-dim', { a: { dtype: 'U8', shape: [1.5], data_offsets: [0, 1] } }, 1, {}, /negative or non-integer/],
    ['size-mismatch', { a: { dtype: 'F32', shape: [2], data_offsets: [0, 4] } }, 4, {}, /span 4 bytes but F32 \[2\] needs 8/],
    ['overlap', { a: { dtype: 'U8', shape: [4], data_offsets: [0, 4] }, b: { dtype: 'U8', shape: [4], data_offsets: [2, 6] } }, 6, {}, /overlap/],
    ['hole', { a: { dtype: 'U8', shape: [2], data_offsets: [0, 2] }, b: { dtype: 'U8', shape: [2], data_offsets: [4, 6] } }, 6, {}, /leave a hole/],
    ['out-of-file', { a: { dtype: 'U8', shape: [8], data_offsets: [0, 8] } }, 4, {}, /past the end of the file/],
    ['trailing', { a: { dtype: 'U8', shape: [2], data_offsets: [0, 2] } }, 4, {}, /trailing bytes/],
    ['bad-offsets', { a: { dtype: 'U8', shape: [2], data_offsets: [0] } }, 2, {}, /not a pair/],
    ['bad-metadata', { __metadata__: { a: 1 } }, 0, {}, /__metadata__/],
  ];
  for (const [name, header, data, opts, msg] of bad) {
    it(`rejects ${name} with an error naming the file`, async () => {
      const p = await craft(`${name}.safetensors`, header, data, opts);
      const err = await SafetensorsFile.open(p).catch((e) => e);
      expect(err).toBeInstanceOf(SafetensorsFormatError);
      expect(err.message).toContain(p);
      expect(err.message).toMatch(msg);
    });
  }

  it('O_DIRECT reads give the bytes of normal reads, at any offset and at the end of the file', async () => {
    const f = await SafetensorsFile.open(join(STORIES, 'model.safetensors'));
    const mem = new WebAssembly.Memory({ initial: 64 }); // page-aligned, 4 MiB
    try {
      const ts = [...f.tensors.values()].sort((a, b) => a.offset - b.offset);
      const last = ts[ts.length - 1]!;
      expect(last.offset + last.byteLength).toBe(f.size); // its last page ends the file
      for (const t of [ts[0]!, ts[1]!, last]) {
        const want = await t.read();
        for (const [a, b] of [[0, t.byteLength], [3, Math.min(t.byteLength, 5000)], [t.byteLength - 7, t.byteLength]] as const) {
          const got = await t.readBytesDirect(a, b, new Uint8Array(mem.buffer));
          expect(Buffer.compare(got, want.subarray(a, b))).toBe(0);
        }
      }
      expect(() => last.readBytesDirect(0, last.byteLength, new Uint8Array(mem.buffer, 0, 100))).toThrow(RangeError);
    } finally {
      await f.close();
    }
  });

  it('rejects a file shorter than 8 bytes', async () => {
    const p = join(tmp, 'tiny.safetensors');
    await writeFile(p, Buffer.alloc(3));
    await expect(SafetensorsFile.open(p)).rejects.toThrow(/too short/);
  });
});

describe('sharded checkpoints', () => {
  it('rejects an index naming a missing shard, a tensor not in its shard, and duplicates', async () => {
    const dir = join(tmp, 'sharded');
    await mkdir(dir, { recursive: true });
    await craft('sharded/a.safetensors', { x: { dtype: 'U8', shape: [1], data_offsets: [0, 1] } }, 1);
    await craft('sharded/b.safetensors', { x: { dtype: 'U8', shape: [1], data_offsets: [0, 1] } }, 1);
    const idx = (wm: object) => writeFile(join(dir, INDEX_FILE), JSON.stringify({ metadata: {}, weight_map: wm }));
    await idx({ x: 'missing.safetensors' });
    await expect(openCheckpoint(dir)).rejects.toThrow(/shard "missing.safetensors" named in weight_map does not exist/);
    await idx({ y: 'a.safetensors' });
    await expect(openCheckpoint(dir)).rejects.toThrow(/a.safetensors: tensor "y": listed in model.safetensors.index.json but not present/);
    await idx({ x: 'a.safetensors', z: 'b.safetensors' });
    await expect(openCheckpoint(dir)).rejects.toThrow(/stored in both/);
    await writeFile(join(dir, INDEX_FILE), '{not json');
    await expect(openCheckpoint(dir)).rejects.toThrow(CheckpointError);
  });
  it('names a folder without weights', async () => {
    await expect(openCheckpoint(tmp)).rejects.toThrow(/no model.safetensors or model.safetensors.index.json/);
  });
});

describe('planned shard writer', () => {
  it('parses sizes like ModelOpt (GB decimal, GiB binary)', () => {
    expect(parseSize('10GB')).toBe(10e9);
    expect(parseSize('5GiB')).toBe(5 * 2 ** 30);
    expect(parseSize('500MB')).toBe(500e6);
    expect(parseSize('2MiB')).toBe(2 * 2 ** 20);
    expect(() => parseSize('10 parsecs')).toThrow(/invalid size/);
  });

  for (const [label, dir] of [['stories260K', STORIES], ...DENSE_MODELS.map((a) => [a, synthetic(a)]), ['mixtral', synthetic('mixtral')], ['deepseek_v3', synthetic('deepseek_v3')]] as [string, string][]) {
    it(`round-trips ${label} byte-identically, sharded, writing tensors in reverse order`, async () => {
      const src = await openCheckpoint(dir);
      const specs = [...src.tensors.values()].map((t) => ({ name: t.name, dtype: t.dtype, shape: t.shape }));
      const plan = planShards(specs, 200_000); // forces several shards
      const out = join(tmp, `rt-${label}`);
      const w = await ShardWriter.create(out, plan);
      for (const t of [...src.tensors.values()].reverse()) {
        const bytes = await t.read();
        // write in two halves, second half first, to exercise ranged writes
        const h = Math.floor(bytes.length / 2);
        await w.write(t.name, bytes.subarray(h), h);
        await w.write(t.name, bytes.subarray(0, h), 0);
      }
      await w.finish();
      const want = await readAll(join(dir, 'model.safetensors'));
      const back = await openCheckpoint(out);
      expect(back.tensors.size).toBe(want.size);
      for (const [name, t] of back.tensors) {
        const ref = want.get(name)!;
        expect(t.dtype).toBe(ref.dtype);
        expect(t.shape).toEqual(ref.shape);
        expect(Buffer.compare(await t.read(), ref.bytes)).toBe(0);
      }
      const f = await SafetensorsFile.open(join(out, plan.shards[0]!.file));
      expect(f.metadata).toEqual({ format: 'pt' });
      await f.close();
      if (plan.shards.length > 1) {
        const index = JSON.parse(await readFile(join(out, INDEX_FILE), 'utf8'));
        expect(index.metadata.total_size).toBe([...want.values()].reduce((s, t) => s + t.bytes.length, 0));
        expect(Object.keys(index.weight_map).length).toBe(want.size);
      }
      await back.close();
      await src.close();
    });
  }

  it('lays tensors out as the safetensors crate does: dtype rank (its Dtype enum order) descending, then name', async () => {
    // the crate's Dtype enum, lowest first: BOOL, U8, I8, F8_E5M2, F8_E4M3, I16, U16, F16, BF16, I32,
    // U32, F32, F64, I64, U64; its writer sorts by that rank, highest first, then by name. So an
    // NVFP4 weight_scale (F8_E4M3) precedes every packed weight (U8), and BF16 precedes F16.
    const plan = planShards(
      [
        { name: 'a.weight', dtype: 'U8', shape: [4] },
        { name: 'a.weight_scale', dtype: 'F8_E4M3', shape: [2] },
        { name: 'b.weight', dtype: 'U8', shape: [4] },
        { name: 'b.weight_scale', dtype: 'F8_E4M3', shape: [2] },
        { name: 'c', dtype: 'F16', shape: [1] },
        { name: 'd', dtype: 'BF16', shape: [1] },
        { name: 'e', dtype: 'I64', shape: [1] },
        { name: 'f', dtype: 'F32', shape: [1] },
      ],
      1e9,
    );
    expect(plan.shards[0]!.tensors.map((t) => t.name)).toEqual(['e', 'f', 'd', 'c', 'a.weight_scale', 'b.weight_scale', 'a.weight', 'b.weight']);
    // and every file the shared fixtures hold (written by torch through the crate) is planned at its own offsets
    const files = [join(STORIES, 'model.safetensors'), ...DENSE_MODELS.map((a) => join(synthetic(a), 'model.safetensors')), join(synthetic('deepseek_v3_fp8'), 'model-00001-of-00002.safetensors'), join(synthetic('deepseek_v3_fp8'), 'model-00002-of-00002.safetensors'), join(synthetic('deepseek_v3_fp8'), 'dequant_golden.safetensors')];
    for (const path of files) {
      const f = await SafetensorsFile.open(path);
      try {
        const ours = planShards(f.header.tensors.map((t) => ({ name: t.name, dtype: t.dtype, shape: t.shape })), Number.MAX_SAFE_INTEGER).shards[0]!.tensors;
        expect(ours.map((t) => [t.name, t.offset]), path).toEqual(f.header.tensors.map((t) => [t.name, t.dataOffsets[0]]));
      } finally {
        await f.close();
      }
    }
  });

  it('refuses a tensor written twice or never, and leaves no output folder', async () => {
    const plan = planShards([{ name: 'a', dtype: 'U8', shape: [4] }, { name: 'b', dtype: 'U8', shape: [2] }], 1e9);
    const out = join(tmp, 'incomplete');
    const w = await ShardWriter.create(out, plan);
    await w.write('a', new Uint8Array(4));
    await expect(w.write('a', new Uint8Array(1), 2)).rejects.toThrow(/written twice/);
    await expect(w.finish()).rejects.toThrow(/never written, e.g. "b"/);
    expect((await readdir(tmp)).includes('incomplete')).toBe(false);
    expect((await readdir(tmp)).some((n) => n.includes('incomplete'))).toBe(false);
    expect(tempDirFor(out)).toContain('.incomplete.rxquant-partial');
  });

  it('refuses a non-empty destination unless overwrite, and overwrites only an earlier export', async () => {
    const out = join(tmp, 'occupied');
    await mkdir(out, { recursive: true });
    await writeFile(join(out, 'keep.txt'), 'x');
    const plan = planShards([{ name: 'a', dtype: 'U8', shape: [1] }], 1e9);
    await expect(ShardWriter.create(out, plan)).rejects.toThrow(OutputError);
    await expect(ShardWriter.create(out, plan, { overwrite: true })).rejects.toThrow(/replaces only an earlier rxquant export or an empty folder/);
    expect(await readdir(out)).toEqual(['keep.txt']);
    // an earlier export: both quantization configs, plain files
    await writeFile(join(out, 'config.json'), JSON.stringify({ quantization_config: { quant_method: 'modelopt' } }));
    await writeFile(join(out, 'hf_quant_config.json'), '{}');
    const w = await ShardWriter.create(out, plan, { overwrite: true });
    await w.write('a', new Uint8Array([7]));
    await w.finish();
    expect(await readdir(out)).toEqual(['model.safetensors']);
  });
});
