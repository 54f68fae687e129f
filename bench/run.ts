/**
 * `npm run bench [section...]`: measurements side by side in one run, appended to bench/RESULTS.md
 * with the date and machine. Sections: read, kernels, export, calibration, awq, calibration-memory,
 * moe, megatron, distributed, large, deepseek, perplexity, awq-quality (default: all but large (a 26 GB checkpoint),
 * deepseek (~16 GB), perplexity (~20 minutes) and awq-quality (several minutes)).
 */
import { appendFile, mkdir } from 'node:fs/promises';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { benchRead } from './read.js';
import { benchCalibration } from './calibration.js';
import { benchPerplexity } from './perplexity.js';
import { benchKernels } from './kernels.js';
import { benchExport } from './export.js';
import { benchCalibrationMemory } from './calibration-memory.js';
import { benchMoe } from './moe.js';
import { benchDeepseek } from './deepseek.js';
import { benchAwq } from './awq.js';
import { benchAwqQuality } from './awq-quality.js';
import { benchMegatron, benchMegatronLarge } from './megatron.js';
import { benchDistributed } from './distributed.js';
import { machine } from './util.js';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const DATA = process.env.RXQUANT_BENCH_DIR ?? join(ROOT, 'bench', 'data');

const SECTIONS: Record<string, () => Promise<string[]>> = {
  read: () => benchRead(DATA),
  kernels: () => benchKernels(),
  export: () => benchExport(DATA, 5, undefined, 5),
  calibration: () => benchCalibration(DATA),
  // AWQ-lite search time per 8B-shaped layer against the same layer's max calibration
  awq: () => benchAwq(),
  // perplexity with and without the AWQ search (a few minutes): run it by name
  'awq-quality': () => benchAwqQuality(),
  'calibration-memory': () => benchCalibrationMemory(DATA),
  // the same 8B-shaped checkpoint as a Megatron torch_dist one (TP=2) against its safetensors: time, RSS, same bytes
  megatron: () => benchMegatron(DATA),
  // the same at 57 layers (~26 GB each way, larger than this machine's RAM): run it by name
  'megatron-large': () => benchMegatronLarge(DATA),
  // the 8B-shaped export by 1 and 2 worker processes over Redis against one process; calibration groups in sequence and two at a time
  distributed: () => benchDistributed(DATA),
  // Qwen3-30B-A3B-shaped MoE: calibration memory against the number of experts, NVFP4 export vs the floor
  moe: () => benchMoe(DATA),
  // DeepSeek V3 dimensions from an FP8-block source (~16 GB): run it by name
  deepseek: () => benchDeepseek(DATA),
  // a checkpoint larger than this machine's 24 GiB of RAM (~26 GB): run it by name
  large: () => benchExport(DATA, 57, ['fp8_pb_wo', 'nvfp4'], 1),
  // long (about 20 minutes): run it by name
  perplexity: () => benchPerplexity(join(ROOT, '..', 'shared', 'data', 'text', 'tinystories_valid_excerpt.txt')),
};

async function main() {
  const wanted = process.argv.slice(2);
  const names = wanted.length ? wanted : Object.keys(SECTIONS).filter((n) => n !== 'perplexity' && n !== 'awq-quality' && n !== 'large' && n !== 'deepseek' && n !== 'megatron-large');
  await mkdir(DATA, { recursive: true });
  const lines = [`\n## ${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC — ${machine()}\n`];
  for (const n of names) {
    const f = SECTIONS[n];
    if (!f) throw new Error(`unknown bench section "${n}" (${Object.keys(SECTIONS).join(', ')})`);
    process.stderr.write(`bench: ${n}...\n`);
    const rows = await f();
    lines.push(`### ${n}\n`, ...rows, '');
    process.stdout.write(rows.join('\n') + '\n');
  }
  await appendFile(join(ROOT, 'bench', 'RESULTS.md'), lines.join('\n') + '\n');
}

await main();
