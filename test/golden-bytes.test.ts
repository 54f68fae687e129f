/**
 * Byte-identity guard for refactors: every dense reference model exported in every format, each
 * export's files hashed (sha256 over "name\0bytes" of every file, sorted by name). The expected
 * hashes below were recorded from main before the model-family / tensor-source / format-record
 * refactor (commit c1e0d2b); an intended change of output bytes must update them in the same commit
 * and say why. What the bytes *should* be is checked elsewhere (export.test.ts against the spec's
 * formulas, export-rules.test.ts); this test only says that they did not move.
 *
 * Statistics: each model's transformers reference statistics. The "+pqs" variants add a
 * deterministic non-trivial pre_quant_scale to every linear, so the AWQ folds and edits are covered.
 * Set RXQ_GOLDEN_PRINT=<file> to write the table there instead of asserting (when bytes change on purpose).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { exportCheckpoint, loadStats, type Stats } from '../src/index.js';
import { FORMAT_NAMES } from '../src/export/formats.js';
import { DATA, REF, STORIES, synthetic } from './helpers.js';

const MODELS: Record<string, { dir: string; stats: string }> = {
  llama31: { dir: synthetic('llama31'), stats: join(synthetic('llama31'), 'reference.safetensors') },
  qwen2: { dir: synthetic('qwen2'), stats: join(synthetic('qwen2'), 'reference.safetensors') },
  qwen3: { dir: synthetic('qwen3'), stats: join(synthetic('qwen3'), 'reference.safetensors') },
  mistral: { dir: synthetic('mistral'), stats: join(synthetic('mistral'), 'reference.safetensors') },
  stories260K: { dir: STORIES, stats: join(REF, 'stories260K', 'calib16x256.safetensors') },
  'stories-mini': { dir: join(DATA, 'stories-mini', 'hf'), stats: join(DATA, 'stories-mini', 'reference', 'calib.safetensors') },
};

/** A pre_quant_scale of exact bf16 values in [0.5, 2], different per channel and per linear. */
function withPqs(stats: Stats): Stats {
  const out: Stats = new Map(stats);
  let seed = 0;
  for (const [k, v] of stats) {
    if (!k.endsWith('.input_absmean')) continue;
    seed++;
    const pqs = Float32Array.from({ length: v.length }, (_, i) => 0.5 + ((i * 7 + seed * 3) % 13) / 8);
    out.set(k.replace(/\.input_absmean$/, '.pre_quant_scale'), pqs);
  }
  return out;
}

async function hashDir(dir: string): Promise<string> {
  const h = createHash('sha256');
  for (const f of (await readdir(dir)).sort()) h.update(f).update('\0').update(await readFile(join(dir, f)));
  return h.digest('hex').slice(0, 16);
}

const EXPECTED: Record<string, string> = {
  "llama31/fp8": "12536a2c85eb4ab3",
  "llama31/fp8_pb_wo": "1567e6b545d9d25e",
  "llama31/nvfp4": "e87b67d18bed1542",
  "llama31/nvfp4_awq": "4f420c7c3f8a466c",
  "llama31/int4_awq": "3a0165175f445983",
  "llama31/w4a8_awq": "5bf24ddaba112ecf",
  "llama31+pqs/nvfp4_awq": "4fc967caaae241e9",
  "llama31+pqs/int4_awq": "9a23b8483815b257",
  "llama31+pqs/w4a8_awq": "978d4f79c0fb5c59",
  "qwen2/fp8": "a1899d283780c78a",
  "qwen2/fp8_pb_wo": "505b1931a351dccc",
  "qwen2/nvfp4": "31ddd05ddbc5921b",
  "qwen2/nvfp4_awq": "79d1b5058c5988ac",
  "qwen2/int4_awq": "b50a5951ca57be0a",
  "qwen2/w4a8_awq": "ddb720817876b972",
  "qwen2+pqs/nvfp4_awq": "aaa3582ce2361250",
  "qwen2+pqs/int4_awq": "7619a7029d29cb80",
  "qwen2+pqs/w4a8_awq": "c9fe09e3da090047",
  "qwen3/fp8": "186415c387ab3c7b",
  "qwen3/fp8_pb_wo": "e49e3b3c4a08457a",
  "qwen3/nvfp4": "75beff9fc31835da",
  "qwen3/nvfp4_awq": "f46d4cccedf9e94d",
  "qwen3/int4_awq": "08bd5893417dde97",
  "qwen3/w4a8_awq": "4accd20eb62872c1",
  "qwen3+pqs/nvfp4_awq": "b2c21f682ed424a8",
  "qwen3+pqs/int4_awq": "aa90c020f387c11c",
  "qwen3+pqs/w4a8_awq": "e2eefcc118838e95",
  "mistral/fp8": "038c9882a0632c62",
  "mistral/fp8_pb_wo": "f14335fcb8fa427a",
  "mistral/nvfp4": "740b6d41a0d583d0",
  "mistral/nvfp4_awq": "0ad4366d85abb705",
  "mistral/int4_awq": "0312eeee34c80043",
  "mistral/w4a8_awq": "73d96efa2a1a6e4e",
  "mistral+pqs/nvfp4_awq": "ba5354a4eb34ff27",
  "mistral+pqs/int4_awq": "32fba269e82b3c98",
  "mistral+pqs/w4a8_awq": "218a601101497873",
  "stories260K/fp8": "96c9acb486ddd4e7",
  "stories260K/fp8_pb_wo": "c83e346348e86361",
  "stories260K/nvfp4": "cf186434cb530a7f",
  "stories260K/nvfp4_awq": "eb8bd48cc47d244e",
  "stories260K/int4_awq": "error: no linear layer of <model> can be quantized to int4_awq (e.g. model.layers.0.self_attn.q_proj: in_features 64 is not a multiple of 128)",
  "stories260K/w4a8_awq": "error: no linear layer of <model> can be quantized to w4a8_awq (e.g. model.layers.0.self_attn.q_proj: in_features 64 is not a multiple of 128)",
  "stories260K+pqs/nvfp4_awq": "321048d1e2f890d5",
  "stories260K+pqs/int4_awq": "error: no linear layer of <model> can be quantized to int4_awq (e.g. model.layers.0.self_attn.q_proj: in_features 64 is not a multiple of 128)",
  "stories260K+pqs/w4a8_awq": "error: no linear layer of <model> can be quantized to w4a8_awq (e.g. model.layers.0.self_attn.q_proj: in_features 64 is not a multiple of 128)",
  "stories-mini/fp8": "883ac5325af85695",
  "stories-mini/fp8_pb_wo": "4a6d74c7139d6005",
  "stories-mini/nvfp4": "d423c31d70bb0082",
  "stories-mini/nvfp4_awq": "38b75418b6fdd796",
  "stories-mini/int4_awq": "4e89985fcf291ac4",
  "stories-mini/w4a8_awq": "65207dfd1e8d6eb4",
  "stories-mini+pqs/nvfp4_awq": "f10c9c7f7bdb4f66",
  "stories-mini+pqs/int4_awq": "cd6853b9ab20ab6e",
  "stories-mini+pqs/w4a8_awq": "ae2008dfbc70a4dc",
};

let tmp: string;
beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'rxq-golden-'));
});
afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});

describe('exports are byte-identical to the recorded pre-refactor bytes', () => {
  const got: Record<string, string> = {};
  for (const [name, m] of Object.entries(MODELS)) {
    it(name, async () => {
      const base = await loadStats(m.stats);
      for (const variant of ['', '+pqs']) {
        const stats = variant ? withPqs(base) : base;
        for (const format of FORMAT_NAMES) {
          if (variant && !format.includes('awq')) continue;
          const key = `${name}${variant}/${format}`;
          const out = join(tmp, key.replace(/[/+]/g, '_'));
          let hash: string;
          try {
            await exportCheckpoint({ model: m.dir, format, out, stats, workers: 0 });
            hash = await hashDir(out);
          } catch (e) {
            hash = `error: ${(e as Error).message.replace(m.dir, '<model>')}`;
          }
          got[key] = hash;
          if (!process.env.RXQ_GOLDEN_PRINT) expect(hash, key).toBe(EXPECTED[key]);
        }
      }
    });
  }
  afterAll(() => {
    if (process.env.RXQ_GOLDEN_PRINT) writeFileSync(process.env.RXQ_GOLDEN_PRINT, JSON.stringify(got, null, 2));
  });
});
