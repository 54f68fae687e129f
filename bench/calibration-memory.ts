/**
 * Peak memory of an export with calibration, against the target "one decoder layer's weights in f32
 * + the calibration activations + 300 MiB": `rxquant quantize --calib` (the bundled TinyStories text,
 * 8 samples of 512 tokens, fp8) on the 5-layer Llama-3.1-8B-shaped checkpoint, with the bundled
 * tokenizer beside it (token ids < 512 are valid in the 128,256-entry vocabulary).
 */
import { rmSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { synthesize, withBundledTokenizer } from './synth.js';
import { timeWithRss } from './util.js';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const MiB = 2 ** 20;

export async function benchCalibrationMemory(dataDir: string, layers = 5, samples = 8): Promise<string[]> {
  const model = join(dataDir, `llama8b-${layers}`);
  await synthesize(model, layers);
  const dir = join(dataDir, `llama8b-${layers}-tok`);
  withBundledTokenizer(model, dir);
  const out = join(dataDir, 'out-calib');
  const r = timeWithRss(`node ${join(ROOT, 'bin', 'rxquant.js')} quantize ${dir} -f fp8 --calib-samples ${samples} -o ${out} --overwrite --json`);
  rmSync(out, { recursive: true, force: true });
  rmSync(dir, { recursive: true, force: true });
  // Llama-3.1-8B layer: q 4096x4096, k and v 1024x4096, o 4096x4096, gate and up 14336x4096, down 4096x14336
  const layerF32 = 4 * (2 * 4096 * 4096 + 2 * 1024 * 4096 + 3 * 14336 * 4096);
  const T = 512;
  // hidden states of every sample, plus one sample's largest intermediates (q|k|v, gate|up, their split copies, silu)
  const activations = 4 * (samples * T * 4096 + T * (6144 * 2 + 28672 * 2 + 14336 * 2));
  const target = layerF32 + activations + 300 * MiB;
  return [
    `input: Llama-3.1-8B shapes, ${layers} layers; calibration ${samples} x ${T} tokens; fp8`,
    '',
    '| peak RSS MiB | one layer f32 MiB | activations MiB | target MiB (layer + activations + 300) | x target | wall s |',
    '|---|---|---|---|---|---|',
    `| ${r.rssMiB.toFixed(0)} | ${(layerF32 / MiB).toFixed(0)} | ${(activations / MiB).toFixed(0)} | ${(target / MiB).toFixed(0)} | ${(r.rssMiB / (target / MiB)).toFixed(2)} | ${r.seconds.toFixed(1)} |`,
  ];
}
