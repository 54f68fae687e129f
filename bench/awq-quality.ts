/**
 * AWQ accuracy: perplexity after export with `--awq none` (pre_quant_scale of ones: round-to-nearest)
 * against `--awq lite` (ModelOpt's awq_lite search), same calibration data (32 x 512 tokens of the
 * bundled TinyStories text), on held-out text:
 *  - stories260K (F32, hidden 64: only NVFP4's group of 16 applies) on the first windows of
 *    ../shared/data/text/tinystories_valid_excerpt.txt;
 *  - stories-mini (BF16, in_features 128 / 384: every AWQ format applies) on its eval.txt.
 * "recovered" = the share of the round-to-nearest perplexity loss that the search wins back.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { exportCheckpoint } from '../src/export-checkpoint.js';
import { loadCalibration } from '../src/calibration/data.js';
import { perplexity } from '../src/eval.js';
import type { FormatName } from '../src/export/formats.js';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const SHARED = join(ROOT, '..', 'shared', 'data');

export async function benchAwqQuality(): Promise<string[]> {
  const cases: { model: string; label: string; text: string; maxWindows?: number; formats: FormatName[] }[] = [
    { model: join(ROOT, 'assets', 'stories260K'), label: 'stories260K', text: join(SHARED, 'text', 'tinystories_valid_excerpt.txt'), maxWindows: 128, formats: ['nvfp4_awq'] },
    { model: join(SHARED, 'stories-mini', 'hf'), label: 'stories-mini', text: join(SHARED, 'stories-mini', 'eval.txt'), formats: ['int4_awq', 'w4a8_awq', 'nvfp4_awq'] },
  ];
  const rows = ['| model | format | source | --awq none | --awq lite | recovered | search time |', '|---|---|---|---|---|---|---|'];
  const tmp = await mkdtemp(join(tmpdir(), 'rxq-awq-'));
  const notes: string[] = [];
  try {
    for (const c of cases) {
      const calibration = await loadCalibration(join(ROOT, 'assets', 'text', 'tinystories_calib.txt'), c.model, { samples: 32, seqLen: 512 });
      const base = await perplexity(c.model, c.text, { maxWindows: c.maxWindows });
      notes.push(`${c.label}: ${base.tokens} tokens of ${c.text.slice(c.text.indexOf('shared/'))}`);
      for (const format of c.formats) {
        const ppl: Record<string, number> = {};
        let searchSeconds = 0;
        for (const awq of ['none', 'lite'] as const) {
          const out = join(tmp, `${c.label}-${format}-${awq}`);
          await exportCheckpoint({ model: c.model, format, out, calibration, awq, onCalibrate: (p) => void (searchSeconds += p.awqSeconds ?? 0) });
          ppl[awq] = (await perplexity(out, c.text, { maxWindows: c.maxWindows })).perplexity;
        }
        const recovered = (ppl.none! - ppl.lite!) / (ppl.none! - base.perplexity);
        rows.push(`| ${c.label} | ${format} | ${base.perplexity.toFixed(4)} | ${ppl.none!.toFixed(4)} | ${ppl.lite!.toFixed(4)} | ${(recovered * 100).toFixed(1)}% | ${searchSeconds.toFixed(1)} s |`);
      }
    }
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
  return [...rows, '', ...notes];
}
