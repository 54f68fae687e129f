/**
 * Quality per format: stories260K exported to every format that applies (calibrated on the bundled
 * text), perplexity on the whole TinyStories excerpt with the reference protocol.
 * Usage: node dist/bench/perplexity.js <text> [maxWindows]
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { exportCheckpoint } from '../src/export-checkpoint.js';
import { FORMAT_NAMES } from '../src/export/formats.js';
import { loadCalibration } from '../src/calibration/data.js';
import { perplexity } from '../src/eval.js';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const MODEL = join(ROOT, 'assets', 'stories260K');

export async function benchPerplexity(text: string, maxWindows?: number): Promise<string[]> {
  const tmp = await mkdtemp(join(tmpdir(), 'rxq-ppl-'));
  const rows = ['| format | perplexity | vs source |', '|---|---|---|'];
  try {
    const base = await perplexity(MODEL, text, { maxWindows });
    rows.push(`| source (F32) | ${base.perplexity.toFixed(4)} | |`);
    const calibration = await loadCalibration(join(ROOT, 'assets', 'text', 'tinystories_calib.txt'), MODEL, { samples: 32, seqLen: 512 });
    for (const format of FORMAT_NAMES) {
      const out = join(tmp, format);
      try {
        await exportCheckpoint({ model: MODEL, format, out, calibration, workers: 0 });
      } catch (e) {
        rows.push(`| ${format} | n/a: ${(e as Error).message.replace(/\|/g, '/')} | |`);
        continue;
      }
      const r = await perplexity(out, text, { maxWindows });
      rows.push(`| ${format} | ${r.perplexity.toFixed(4)} | ${(((r.perplexity - base.perplexity) / base.perplexity) * 100).toFixed(2)}% |`);
    }
    rows.push('', `(${base.tokens} tokens of ${text})`);
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
  return rows;
}

if (process.argv[1] && import.meta.url.endsWith(process.argv[1].split('/').pop()!)) {
  const rows = await benchPerplexity(process.argv[2]!, process.argv[3] ? Number(process.argv[3]) : undefined);
  process.stdout.write(rows.join('\n') + '\n');
}
