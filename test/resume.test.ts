/** Crash safety: a run killed mid-way (SIGKILL, as a power loss) resumes to byte-identical output. */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { execFile } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ROOT, synthetic } from './helpers.js';

const BIN = join(ROOT, 'bin', 'rxquant.js');
let tmp: string;
beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'rxq-resume-'));
});
afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});

function cli(args: string[], env: Record<string, string> = {}): Promise<{ code: number | null; signal: string | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile('node', [BIN, ...args], { cwd: tmp, env: { ...process.env, ...env } }, (err, stdout, stderr) => {
      const e = err as (Error & { code?: number; signal?: string }) | null;
      resolve({ code: e ? (e.code ?? null) : 0, signal: e?.signal ?? null, stdout, stderr });
    });
  });
}

async function files(dir: string): Promise<Map<string, Buffer>> {
  const m = new Map<string, Buffer>();
  for (const f of (await readdir(dir)).sort()) m.set(f, await readFile(join(dir, f)));
  return m;
}

describe('resume after a crash', () => {
  const model = synthetic('llama31');
  const stats = join(model, 'reference.safetensors');
  const args = (out: string, format = 'nvfp4') => ['quantize', model, '-f', format, '--stats', stats, '-o', out, '--max-shard-size', '300KB', '--checkpoint-every', '1'];

  it('continues from what was written and produces byte-identical output; other options are refused unless --restart', async () => {
    const ref = join(tmp, 'ref');
    expect((await cli(args(ref))).code).toBe(0);

    const out = join(tmp, 'out');
    const killed = await cli(args(out), { RXQUANT_TEST_KILL_AFTER_UNITS: '1' });
    expect(killed.signal).toBe('SIGKILL');
    expect((await readdir(tmp)).includes('out')).toBe(false);
    expect((await readdir(tmp)).includes('.out.rxquant-partial')).toBe(true);
    // the killed run's lock is left behind, naming a process that no longer exists: it must not block the resume
    const lock = JSON.parse(await readFile(join(tmp, '.out.rxquant-partial.lock'), 'utf8'));
    expect(() => process.kill(lock.pid, 0)).toThrow();

    // a different format is refused, the partial export is kept
    const other = await cli(args(out, 'fp8'));
    expect(other.code).not.toBe(0);
    expect(other.stderr).toMatch(/holds an interrupted export of a different source, format or options; run with --restart/);

    const resumed = await cli(args(out));
    expect(resumed.code, resumed.stderr).toBe(0);
    expect(resumed.stdout).toMatch(/resuming an interrupted export: [1-3] unit\(s\) already on disk are kept/);
    expect((await readdir(tmp)).includes('.out.rxquant-partial.lock')).toBe(false); // released when done
    const a = await files(ref), b = await files(out);
    expect([...b.keys()]).toEqual([...a.keys()]);
    for (const [f, bytes] of a) expect(Buffer.compare(bytes, b.get(f)!), f).toBe(0);
    expect(a.size).toBeGreaterThan(4); // several shards + index + configs

    // interrupted again, then restarted with other options
    const out2 = join(tmp, 'out2');
    expect((await cli(args(out2), { RXQUANT_TEST_KILL_AFTER_UNITS: '2' })).signal).toBe('SIGKILL');
    const restarted = await cli([...args(out2, 'fp8'), '--restart']);
    expect(restarted.code, restarted.stderr).toBe(0);
    expect(JSON.parse(await readFile(join(out2, 'hf_quant_config.json'), 'utf8')).quantization.quant_algo).toBe('FP8');
  });

  it('--no-direct-io (everything through the page cache) writes the same bytes, single-pass format included', async () => {
    for (const format of ['nvfp4', 'fp8_pb_wo']) {
      const a = join(tmp, `direct-${format}`), b = join(tmp, `cached-${format}`);
      expect((await cli(args(a, format))).code).toBe(0);
      const r = await cli([...args(b, format), '--no-direct-io']);
      expect(r.code, r.stderr).toBe(0);
      const fa = await files(a), fb = await files(b);
      expect([...fb.keys()]).toEqual([...fa.keys()]);
      for (const [f, bytes] of fa) expect(Buffer.compare(bytes, fb.get(f)!), f).toBe(0);
    }
  });
});
