/**
 * The bad-input corpus: each malformed input ends with a non-zero exit, one clear `error:` line on
 * stderr naming the file and the problem (no stack trace), the input untouched, and no output
 * folder at the final path.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtemp, rm, cp, writeFile, readFile, readdir, mkdir, chmod, truncate, stat } from 'node:fs/promises';
import { execFile, execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DATA, ROOT, synthetic, STORIES } from './helpers.js';
import * as lib from '../src/index.js';

const BIN = join(ROOT, 'bin', 'rxquant.js');
let tmp: string;
let n = 0;

beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'rxq-bad-'));
});
afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});

function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile('node', [BIN, ...args], { cwd: tmp }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

async function hashTree(dir: string): Promise<string> {
  const h = createHash('sha256');
  for (const f of (await readdir(dir)).sort()) {
    const p = join(dir, f);
    if ((await stat(p)).isFile()) h.update(f).update(await readFile(p));
  }
  return h.digest('hex');
}

/** A fresh writable copy of a small model. */
async function model(src = synthetic('qwen3')): Promise<string> {
  const d = join(tmp, `m${n++}`);
  await cp(src, d, { recursive: true });
  for (const f of await readdir(d)) await chmod(join(d, f), 0o644);
  await rm(join(d, 'reference.safetensors'), { force: true });
  return d;
}

/** Replaces model.safetensors with a crafted header + data. */
async function craft(dir: string, header: unknown, data: number, opts: { len?: bigint; raw?: string } = {}) {
  const json = Buffer.from(opts.raw ?? JSON.stringify(header));
  const buf = Buffer.alloc(8 + json.length + data);
  buf.writeBigUInt64LE(opts.len ?? BigInt(json.length));
  json.copy(buf, 8);
  await writeFile(join(dir, 'model.safetensors'), buf);
}

interface Case {
  name: string;
  setup(): Promise<{ args: string[]; input: string }>;
  message: RegExp;
}

const u8 = (shape: number[], begin: number, end: number) => ({ dtype: 'U8', shape, data_offsets: [begin, end] });

const CASES: Case[] = [
  { name: 'truncated shard', message: /model\.safetensors: .*(past the end of the file|file truncated)/, async setup() {
    const d = await model(); const f = join(d, 'model.safetensors'); await truncate(f, (await stat(f)).size - 1000);
    return { args: ['quantize', d, '-f', 'fp8_pb_wo'], input: d };
  } },
  { name: 'header length zero', message: /model\.safetensors: header length is 0/, async setup() {
    const d = await model(); await craft(d, {}, 8, { len: 0n }); return { args: ['inspect', d], input: d };
  } },
  { name: 'header length past the end', message: /model\.safetensors: header length \d+ goes past the end/, async setup() {
    const d = await model(); await craft(d, {}, 0, { len: 99999n }); return { args: ['quantize', d, '-f', 'fp8'], input: d };
  } },
  { name: 'header not a JSON object', message: /model\.safetensors: header is not a JSON object/, async setup() {
    const d = await model(); await craft(d, null, 0, { raw: '[1, 2, 3]' }); return { args: ['quantize', d, '-f', 'nvfp4'], input: d };
  } },
  { name: 'header not JSON', message: /model\.safetensors: header is not valid UTF-8 JSON/, async setup() {
    const d = await model(); await craft(d, null, 0, { raw: '{"a": [' }); return { args: ['inspect', join(d, 'model.safetensors')], input: d };
  } },
  { name: 'unknown dtype', message: /tensor "a": unknown dtype "Q4_K"/, async setup() {
    const d = await model(); await craft(d, { a: { dtype: 'Q4_K', shape: [2], data_offsets: [0, 2] } }, 2); return { args: ['inspect', d], input: d };
  } },
  { name: 'shape/bytes mismatch', message: /tensor "a": data_offsets span 3 bytes but U8 \[4\] needs 4/, async setup() {
    const d = await model(); await craft(d, { a: u8([4], 0, 3) }, 3); return { args: ['quantize', d, '-f', 'fp8'], input: d };
  } },
  { name: 'overlapping offsets', message: /tensor "b": data_offsets \[2, 6\] overlap/, async setup() {
    const d = await model(); await craft(d, { a: u8([4], 0, 4), b: u8([4], 2, 6) }, 6); return { args: ['inspect', d], input: d };
  } },
  { name: 'out-of-file offsets', message: /tensor "a": data_offsets \[0, 64\] go past the end of the file/, async setup() {
    const d = await model(); await craft(d, { a: u8([64], 0, 64) }, 16); return { args: ['inspect', d], input: d };
  } },
  { name: 'hole between tensors', message: /tensor "b": .*leave a hole/, async setup() {
    const d = await model(); await craft(d, { a: u8([2], 0, 2), b: u8([2], 4, 6) }, 6); return { args: ['inspect', d], input: d };
  } },
  { name: 'negative dimension', message: /tensor "a": shape \[-4\] has a negative or non-integer dimension/, async setup() {
    const d = await model(); await craft(d, { a: { dtype: 'U8', shape: [-4], data_offsets: [0, 4] } }, 4); return { args: ['inspect', d], input: d };
  } },
  { name: 'index names a missing shard', message: /model\.safetensors\.index\.json: shard "model-00002-of-00002\.safetensors" named in weight_map does not exist/, async setup() {
    const d = await model();
    await writeFile(join(d, 'model.safetensors.index.json'), JSON.stringify({ metadata: {}, weight_map: { 'model.norm.weight': 'model-00002-of-00002.safetensors' } }));
    return { args: ['quantize', d, '-f', 'fp8_pb_wo'], input: d };
  } },
  { name: 'index names a tensor not in its shard', message: /model\.safetensors: tensor "model\.layers\.9\.mlp\.up_proj\.weight": listed in model\.safetensors\.index\.json but not present/, async setup() {
    const d = await model();
    await writeFile(join(d, 'model.safetensors.index.json'), JSON.stringify({ metadata: {}, weight_map: { 'model.layers.9.mlp.up_proj.weight': 'model.safetensors' } }));
    return { args: ['quantize', d, '-f', 'fp8_pb_wo'], input: d };
  } },
  { name: 'missing config.json', message: /config\.json: missing/, async setup() {
    const d = await model(); await rm(join(d, 'config.json')); return { args: ['quantize', d, '-f', 'fp8_pb_wo'], input: d };
  } },
  { name: 'invalid config.json', message: /config\.json: not valid JSON/, async setup() {
    const d = await model(); await writeFile(join(d, 'config.json'), '{"model_type": "qwen3",'); return { args: ['quantize', d, '-f', 'fp8_pb_wo'], input: d };
  } },
  { name: 'config.json with a bad field', message: /config\.json: "hidden_size" must be a positive integer/, async setup() {
    const d = await model(); const c = JSON.parse(await readFile(join(d, 'config.json'), 'utf8')); c.hidden_size = -1;
    await writeFile(join(d, 'config.json'), JSON.stringify(c)); return { args: ['quantize', d, '-f', 'fp8_pb_wo'], input: d };
  } },
  { name: 'config.json promises more layers than the weights hold', message: /tensor "model\.layers\.2\.self_attn\.q_proj\.weight" is missing \(config\.json says 3 layers\)/, async setup() {
    const d = await model(); const c = JSON.parse(await readFile(join(d, 'config.json'), 'utf8')); c.num_hidden_layers = 3;
    await writeFile(join(d, 'config.json'), JSON.stringify(c)); return { args: ['quantize', d, '-f', 'fp8_pb_wo'], input: d };
  } },
  { name: 'unsupported architecture', message: /model_type "gpt_neox" is not supported; supported: llama, qwen2, qwen3, mistral, mixtral, qwen3_moe, llama4_text, llama4, deepseek_v3/, async setup() {
    const d = await model(synthetic('llama31'));
    const c = JSON.parse(await readFile(join(d, 'config.json'), 'utf8'));
    await writeFile(join(d, 'config.json'), JSON.stringify({ ...c, model_type: 'gpt_neox' })); return { args: ['quantize', d, '-f', 'fp8'], input: d };
  } },
  { name: 'NaN weight', message: /tensor "model\.layers\.0\.self_attn\.k_proj\.weight" has NaN at row 0, column 1/, async setup() {
    const d = await model(); await poison(d, 'model.layers.0.self_attn.k_proj.weight', 0x7fc0); return { args: ['quantize', d, '-f', 'fp8_pb_wo'], input: d };
  } },
  { name: 'Inf weight', message: /tensor "model\.layers\.1\.mlp\.down_proj\.weight" has -Infinity/, async setup() {
    const d = await model(); await poison(d, 'model.layers.1.mlp.down_proj.weight', 0xff80); return { args: ['quantize', d, '-f', 'int4_awq', '--awq', 'none'], input: d };
  } },
  { name: 'NaN weight met by the AWQ search (int4_awq, calibrated)', message: /tensor "model\.layers\.2\.mlp\.down_proj\.weight" has NaN at row 0, column 1/, async setup() {
    const d = await model(join(DATA, 'stories-mini', 'hf')); await poison(d, 'model.layers.2.mlp.down_proj.weight', 0x7fc0);
    return { args: ['quantize', d, '-f', 'int4_awq', '--calib', join(ROOT, 'assets', 'text', 'tinystories_calib.txt'), '--calib-samples', '2', '--calib-seq-len', '64'], input: d };
  } },
  { name: 'AWQ search without a tokenizer', message: /tokenizer\.json: missing: calibration text needs the model's tokenizer\.json/, async setup() {
    const d = await model(); return { args: ['quantize', d, '-f', 'int4_awq'], input: d };
  } },
  { name: '--awq on a format without AWQ', message: /--awq applies to the AWQ formats \(nvfp4_awq, int4_awq, w4a8_awq\), not fp8/, async setup() {
    const d = await model(); return { args: ['quantize', d, '-f', 'fp8', '--awq', 'lite'], input: d };
  } },
  { name: '--awq clip on w4a8_awq (ModelOpt undoes it)', message: /--awq clip changes nothing for w4a8_awq/, async setup() {
    const d = await model(); return { args: ['quantize', d, '-f', 'w4a8_awq', '--awq', 'clip', '--calib', join(tmp, 'nope.txt')], input: d };
  } },
  { name: 'missing calibration data', message: /nope\.txt: calibration data not found/, async setup() {
    const d = await model(); return { args: ['quantize', d, '-f', 'fp8', '--calib', join(tmp, 'nope.txt')], input: d };
  } },
  { name: 'empty calibration data', message: /empty\.jsonl: calibration data is empty/, async setup() {
    const d = await model(); await writeFile(join(tmp, 'empty.jsonl'), ''); return { args: ['calibrate', d, '--calib', join(tmp, 'empty.jsonl'), '-o', join(tmp, 's.safetensors')], input: d };
  } },
  { name: 'statistics missing a module', message: /format nvfp4 needs activation statistics: "model\.layers\.0\.self_attn\.k_proj\.input_amax" \(and 12 more\) not found/, async setup() {
    const d = await model();
    const p = join(tmp, 'partial-stats.safetensors');
    await lib.writeStats(p, new Map([['model.layers.0.self_attn.q_proj.input_amax', Float32Array.of(3)]]));
    return { args: ['quantize', d, '-f', 'nvfp4', '--stats', p], input: d };
  } },
  { name: 'statistics file missing', message: /stats\.safetensors: cannot open: ENOENT/, async setup() {
    const d = await model(); return { args: ['quantize', d, '-f', 'fp8', '--stats', join(tmp, 'no', 'stats.safetensors')], input: d };
  } },
  { name: 'unwritable output location', message: /cannot create the output folder \(ENOTDIR\)/, async setup() {
    const d = await model(); await writeFile(join(tmp, 'a-file'), 'x'); return { args: ['quantize', d, '-f', 'fp8_pb_wo', '-o', join(tmp, 'a-file', 'out')], input: d };
  } },
  { name: 'non-empty output without --overwrite', message: /output folder exists and is not empty \(pass --overwrite to replace it\)/, async setup() {
    const d = await model(); await mkdir(join(tmp, 'occupied'), { recursive: true }); await writeFile(join(tmp, 'occupied', 'x'), 'x');
    return { args: ['quantize', d, '-f', 'fp8_pb_wo', '-o', join(tmp, 'occupied')], input: d };
  } },
  { name: 'bad --max-shard-size', message: /invalid size "ten gigs"/, async setup() {
    const d = await model(); return { args: ['quantize', d, '-f', 'fp8_pb_wo', '--max-shard-size', 'ten gigs'], input: d };
  } },
  { name: 'unknown format', message: /argument 'fp3' is invalid\. Allowed choices are fp8, fp8_pb_wo, nvfp4/, async setup() {
    const d = await model(); return { args: ['quantize', d, '-f', 'fp3'], input: d };
  } },
  { name: 'nothing quantizable', message: /no linear layer of .* can be quantized to int4_awq \(e\.g\. model\.layers\.0\.self_attn\.q_proj: in_features 64 is not a multiple of 128\)/, async setup() {
    const d = await model(STORIES); return { args: ['quantize', d, '-f', 'int4_awq'], input: d };
  } },
  { name: 'verify on a plain checkpoint', message: /hf_quant_config\.json is missing/, async setup() {
    const d = await model(); return { args: ['verify', d], input: d };
  } },
];

/** Sets element 1 (row 0, column 1) of a bf16 tensor to the given bits. */
async function poison(dir: string, tensor: string, bits: number) {
  const f = await lib.SafetensorsFile.open(join(dir, 'model.safetensors'));
  const t = f.tensor(tensor);
  await f.close();
  const buf = await readFile(join(dir, 'model.safetensors'));
  buf.writeUInt16LE(bits, t.offset + 2);
  await writeFile(join(dir, 'model.safetensors'), buf);
}

describe('bad-input corpus', () => {
  it('has at least 20 cases', () => expect(CASES.length).toBeGreaterThanOrEqual(20));
  for (const c of CASES) {
    it(c.name, async () => {
      const { args, input } = await c.setup();
      const out = join(tmp, `out-${c.name.replace(/\W+/g, '-')}`);
      const full = args.includes('-o') || ['inspect', 'verify', 'calibrate'].includes(args[0]!) ? args : [...args, '-o', out];
      const before = await hashTree(input);
      const r = await cli(full);
      expect(r.code, r.stderr + r.stdout).not.toBe(0);
      const lines = r.stderr.trim().split('\n');
      if (args[0] === 'verify') {
        expect(r.stdout).toMatch(c.message);
      } else {
        expect(lines, r.stderr).toHaveLength(1);
        expect(lines[0]).toMatch(/^error: /);
        expect(lines[0]).toMatch(c.message);
        expect(r.stderr).not.toMatch(/\n\s+at /);
      }
      expect(await hashTree(input)).toBe(before);
      const left = (await readdir(tmp)).filter((x) => x.includes(`out-${c.name.replace(/\W+/g, '-')}`));
      expect(left).toEqual([]);
    });
  }

  /** Runs `body` on a fresh tmpfs of `size` (root can mount one here); says so when it cannot. */
  async function onTmpfs(name: string, size: string, what: string, body: (mnt: string) => Promise<void>) {
    const mnt = join(tmp, name);
    await mkdir(mnt, { recursive: true });
    try {
      execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', mnt]);
    } catch {
      console.warn(`cannot mount a tmpfs here: ${what} not exercised`);
      return;
    }
    try {
      await body(mnt);
    } finally {
      execFileSync('umount', [mnt]);
    }
  }

  it('a full disk is refused before any work, and nothing is left behind', () =>
    onTmpfs('tinyfs', '256k', 'full-disk case', async (mnt) => {
      const d = await model();
      const r = await cli(['quantize', d, '-f', 'fp8_pb_wo', '-o', join(mnt, 'out')]);
      expect(r.code).not.toBe(0);
      expect(r.stderr.trim()).toMatch(/^error: .*tinyfs: not enough free disk space: the export needs [\d.]+ [KM]B, [\d.]+ KB are free$/);
      expect(await readdir(mnt)).toEqual([]);
    }));

  it('a disk that fills up mid-run is a clear error and leaves nothing behind', () =>
    onTmpfs('tinyfs2', '20m', 'mid-run full-disk case', async (mnt) => {
      const plan = lib.planShards([{ name: 'a', dtype: 'U8', shape: [3_000_000] }], 1e9);
      const w = await lib.ShardWriter.create(join(mnt, 'out'), plan); // passes the free-space check
      await writeFile(join(mnt, 'filler'), Buffer.alloc(19_000_000)); // then something else takes the space
      // writes go to disk in the background: the error surfaces at the latest when finishing
      const err = await w
        .write('a', new Uint8Array(3_000_000))
        .then(() => w.finish())
        .catch((e) => e);
      expect(err).toBeInstanceOf(lib.OutputError);
      expect(err.message).toMatch(/disk full while writing \(ENOSPC\)/);
      await w.abort();
      expect((await readdir(mnt)).sort()).toEqual(['filler']);
    }));

  it('errors are typed classes exported by the library', () => {
    for (const cls of ['RxquantError', 'SafetensorsFormatError', 'CheckpointError', 'UnsupportedModelError', 'QuantizationError', 'UsageError', 'OutputError', 'CalibrationDataError']) {
      expect(typeof (lib as Record<string, unknown>)[cls]).toBe('function');
    }
  });
});
