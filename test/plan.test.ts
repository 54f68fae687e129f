import { describe, expect, it } from 'vitest';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { ROOT, STORIES, synthetic } from './helpers.js';
import { openModel } from '../src/model.js';
import { jsGemm, type GemmEngine } from '../src/forward/gemm.js';
import { calibrationSeconds, measureCalibrationRate } from '../src/calibration/rate.js';
import { planExport } from '../src/plan-report.js';
import { exportCheckpoint, openCheckpoint, loadStats } from '../src/index.js';

const run = promisify(execFile);

describe('rxquant plan', () => {
  it('predicts the shards and bytes the export then writes, and writes nothing', async () => {
    const tmp = await mkdtemp(join(tmpdir(), 'rxq-plan-'));
    try {
      const out = join(tmp, 'out');
      const r = await planExport(synthetic('qwen2'), 'nvfp4', { out, maxShardSize: '200KB' });
      expect(await readdir(tmp)).toEqual([]);
      expect(r.shards.length).toBeGreaterThan(1);
      expect(r.engines.find((e) => e.engine === 'TensorRT-LLM')?.loads).toBe(true);
      const stats = await loadStats(join(synthetic('qwen2'), 'reference.safetensors'));
      const done = await exportCheckpoint({ model: synthetic('qwen2'), format: 'nvfp4', out, stats, maxShardSize: '200KB', workers: 0 });
      expect(done.totalBytes).toBe(r.outputBytes);
      const files = (await readdir(out)).filter((f) => f.endsWith('.safetensors')).sort();
      expect(files).toEqual(r.shards.map((s) => s.file));
      const ck = await openCheckpoint(out);
      expect(ck.tensors.size).toBe(r.shards.reduce((a, s) => a + s.tensors, 0));
      await ck.close();
    } finally {
      await rm(tmp, { recursive: true, force: true });
    }
  });

  it('the CLI prints engines, disk and time for the bundled model', async () => {
    const { stdout } = await run('node', [join(ROOT, 'bin', 'rxquant.js'), 'plan', '-f', 'w4a8_awq', '--json'], { cwd: tmpdir() }).catch((e) => e);
    // stories260K cannot be int4-quantized: a clear error instead of a plan
    expect(stdout ?? '').toBe('');
    const r = await run('node', [join(ROOT, 'bin', 'rxquant.js'), 'plan', '-f', 'fp8'], { cwd: tmpdir() });
    expect(r.stdout).toMatch(/loads in SGLang/);
    expect(r.stdout).toMatch(/disk: needs .* free/);
    expect(r.stdout).toMatch(/estimated time: /);
  });
});

describe('plan: calibration time from layer 0 measured on this machine', () => {
  // a GEMM engine that counts what the forward pass asks of it (the plain JavaScript one underneath)
  const counting = () => {
    const n = { prepared: 0, runs: 0 };
    const engine: GemmEngine = {
      name: 'counting',
      async prepare(l) {
        n.prepared++;
        const p = await jsGemm.prepare(l);
        return { run: (x, T) => (n.runs++, p.run(x, T)), release: () => p.release() };
      },
    };
    return { n, engine };
  };

  it.each(['qwen3', 'qwen3_moe'])('%s: layer 0 runs through its family forward pass (one sample timed, or two minus one)', async (family) => {
    const model = await openModel(synthetic(family));
    try {
      const { n, engine } = counting();
      const rate = await measureCalibrationRate(model, 16, engine);
      expect(rate.seqLen).toBe(16);
      expect(rate.sampleSeconds).toBeGreaterThan(0);
      expect(rate.loadSeconds).toBeGreaterThanOrEqual(0);
      expect(n.prepared).toBeGreaterThan(0);
      // every prepared GEMM group ran at least twice (a warm run and the timed one; one and two samples)
      expect(n.runs).toBeGreaterThanOrEqual(2 * (family === 'qwen3' ? n.prepared : 1));
      expect(calibrationSeconds(rate, 10, 4)).toBeCloseTo(10 * (rate.loadSeconds + 4 * rate.sampleSeconds), 9);
    } finally {
      await model.close();
    }
  });

  it('the plan of an export that calibrates adds the measured calibration; with statistics given, none', async () => {
    const withCalib = await planExport(STORIES, 'fp8', { out: join(tmpdir(), 'rxq-plan-none'), calibration: { samples: 8, seqLen: 64 } });
    expect(withCalib.calibrationSeconds).toBeGreaterThan(0);
    expect(withCalib.estimatedSeconds).toBeGreaterThan(withCalib.calibrationSeconds!);
    expect(withCalib.estimateBasis).toMatch(/calibration 8 x 64 tokens through 5 layers: layer 0 measured here, \d+ tokens\/s/);
    const without = await planExport(STORIES, 'fp8', { out: join(tmpdir(), 'rxq-plan-none') });
    expect(without.calibrationSeconds).toBeUndefined();
    expect(without.estimateBasis).toMatch(/no calibration/);
  });
});
