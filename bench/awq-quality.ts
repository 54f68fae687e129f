/**
 * AWQ accuracy: perplexity after export with `--awq none` (pre_quant_scale of ones: round-to-nearest)
 * against `--awq lite`, `clip` and `full` (ModelOpt's searches; clip and full where they reach the
 * export: not for w4a8_awq), same calibration data (32 x 512 tokens of the
 * bundled TinyStories text), on held-out text:
 *  - stories260K (F32, hidden 64: only NVFP4's group of 16 applies) on the first windows of
 *    ../shared/data/text/tinystories_valid_excerpt.txt;
 *  - stories-mini (BF16, in_features 128 / 384: every AWQ format applies) on its eval.txt.
 * "recovered" = the share of the round-to-nearest perplexity loss that the search wins back.
 * stories260K's q/k/v/gate/up have in_features 64 (one NVFP4 global amax each, no INT4): its rows
 * are NVFP4 only.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { exportCheckpoint } from '../src/export-checkpoint.js';
import { loadCalibration } from '../src/calibration/data.js';
import { perplexity } from '../src/eval.js';
import { FORMATS, type FormatName } from '../src/export/formats.js';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const SHARED = join(ROOT, '..', 'shared', 'data');

export async function benchAwqQuality(): Promise<string[]> {
  const cases: { model: string; label: string; text: string; maxWindows?: number; formats: FormatName[] }[] = [
    { model: join(ROOT, 'assets', 'stories260K'), label: 'stories260K', text: join(SHARED, 'text', 'tinystories_valid_excerpt.txt'), maxWindows: 128, formats: ['nvfp4_awq'] },
    { model: join(SHARED, 'stories-mini', 'hf'), label: 'stories-mini', text: join(SHARED, 'stories-mini', 'eval.txt'), formats: ['int4_awq', 'w4a8_awq', 'nvfp4_awq'] },
  ];
  const algos = ['none', 'lite', 'clip', 'full'] as const;
  const rows = [
    '| model | format | source | --awq none | lite | clip | full | recovered by lite / clip / full | search time lite / clip / full |',
    '|---|---|---|---|---|---|---|---|---|',
  ];
  const tmp = await mkdtemp(join(tmpdir(), 'rxq-awq-'));
  const notes: string[] = [];
  try {
    for (const c of cases) {
      const calibration = await loadCalibration(join(ROOT, 'assets', 'text', 'tinystories_calib.txt'), c.model, { samples: 32, seqLen: 512 });
      const base = await perplexity(c.model, c.text, { maxWindows: c.maxWindows });
      notes.push(`${c.label}: ${base.tokens} tokens of ${c.text.slice(c.text.indexOf('shared/'))}`);
      for (const format of c.formats) {
        const ppl: Record<string, number> = {};
        const secs: Record<string, number> = {};
        for (const awq of algos) {
          if ((awq === 'clip' || awq === 'full') && !FORMATS[format].awqClip) continue;
          const out = join(tmp, `${c.label}-${format}-${awq}`);
          secs[awq] = 0;
          await exportCheckpoint({ model: c.model, format, out, calibration, awq, onCalibrate: (p) => void (secs[awq]! += p.awqSeconds ?? 0) });
          ppl[awq] = (await perplexity(out, c.text, { maxWindows: c.maxWindows })).perplexity;
          await rm(out, { recursive: true, force: true });
        }
        const cell = (a: string) => (ppl[a] === undefined ? 'n/a' : ppl[a]!.toFixed(4));
        const rec = (a: string) => (ppl[a] === undefined ? 'n/a' : `${(((ppl.none! - ppl[a]!) / (ppl.none! - base.perplexity)) * 100).toFixed(1)}%`);
        const sec = (a: string) => (secs[a] === undefined ? 'n/a' : `${secs[a]!.toFixed(1)} s`);
        rows.push(`| ${c.label} | ${format} | ${base.perplexity.toFixed(4)} | ${cell('none')} | ${cell('lite')} | ${cell('clip')} | ${cell('full')} | ${rec('lite')} / ${rec('clip')} / ${rec('full')} | ${sec('lite')} / ${sec('clip')} / ${sec('full')} |`);
      }
    }
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
  return [...rows, '', ...notes];
}
