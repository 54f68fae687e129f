import { describe, expect, it } from 'vitest';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { ROOT, synthetic } from './helpers.js';
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
