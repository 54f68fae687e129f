/**
 * Never lose the input (tried as a user would, through the CLI): an output that is, contains or
 * lies inside the source model, or is or contains the folder of the --stats or --calib file, is
 * refused even with --overwrite, however it is spelled (trailing slash, "..", a symlink), and the
 * inputs are unchanged; --overwrite replaces only an earlier export or an empty folder; two runs on
 * one output: one writes, the other is refused at once.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHash } from 'node:crypto';
import { execFile } from 'node:child_process';
import { cp, chmod, mkdir, mkdtemp, readdir, readFile, readlink, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ShardWriter, planShards } from '../src/safetensors/writer.js';
import { ROOT, synthetic } from './helpers.js';

const BIN = join(ROOT, 'bin', 'rxquant.js');
let tmp: string;
beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'rxq-safety-'));
});
afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});

function cli(args: string[], cwd = tmp): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile('node', [BIN, ...args], { cwd }, (err, stdout, stderr) => resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }));
  });
}

/** sha256 over every file below dir (names and bytes), to show an input is unchanged. */
async function hashTree(dir: string): Promise<string> {
  const h = createHash('sha256');
  const walk = async (d: string) => {
    for (const e of (await readdir(d, { withFileTypes: true })).sort((a, b) => (a.name < b.name ? -1 : 1))) {
      const p = join(d, e.name);
      h.update(p.slice(dir.length));
      if (e.isSymbolicLink()) h.update(await readlink(p));
      else if (e.isDirectory()) await walk(p);
      else h.update(await readFile(p));
    }
  };
  await walk(dir);
  return h.digest('hex');
}

/** A user's workspace: work/model (a checkpoint), work/data/stats.safetensors, work/text/calib.txt. */
async function workspace(name: string) {
  const work = join(tmp, name);
  const model = join(work, 'model');
  await cp(synthetic('llama31'), model, { recursive: true });
  for (const f of await readdir(model)) await chmod(join(model, f), 0o644);
  await mkdir(join(work, 'data'));
  await cp(join(model, 'reference.safetensors'), join(work, 'data', 'stats.safetensors'));
  await mkdir(join(work, 'text'));
  await cp(join(ROOT, 'assets', 'text', 'tinystories_calib.txt'), join(work, 'text', 'calib.txt'));
  return { work, model, stats: join(work, 'data', 'stats.safetensors'), calib: join(work, 'text', 'calib.txt') };
}

describe('destructive output paths are refused, even with --overwrite', () => {
  it('same folder, trailing slash, "..", symlink, parent, inside, stats folder, calib folder', async () => {
    const w = await workspace('ws');
    await symlink(w.model, join(w.work, 'link-to-model'));
    const before = await hashTree(w.work);
    const cases: [string, string[], RegExp][] = [
      ['same folder', [w.model], /is the source model/],
      ['trailing slash', [w.model + '/'], /is the source model/],
      ['..', [join(w.model, '..', 'model')], /is the source model/],
      ['relative with ..', ['ws/data/../model'], /is the source model/],
      ['symlink to the model', [join(w.work, 'link-to-model')], /is the source model/],
      ['parent of the model', [w.work], /contains the source model/],
      ['inside the model', [join(w.model, 'quantized')], /lies inside the source model/],
      ['the stats folder', [join(w.work, 'data'), '--stats', w.stats], /contains the --stats file \(/],
      ['the calib folder', [join(w.work, 'text'), '--calib', w.calib], /is the --calib file's folder/],
    ];
    for (const [what, [out, ...extra], message] of cases) {
      const args = ['quantize', w.model, '-f', 'fp8', '--overwrite', '-o', out!, ...(extra.length ? extra : ['--stats', w.stats])];
      const r = await cli(args);
      expect(r.code, `${what}: ${r.stderr}`).not.toBe(0);
      expect(r.stderr, what).toMatch(message);
      expect(r.stderr.trim().split('\n'), what).toHaveLength(1);
      expect(r.stderr).toMatch(/^error: /);
    }
    // calibrate -o into the model folder is refused too
    const c = await cli(['calibrate', w.model, '--calib', w.calib, '-o', join(w.model, 'stats.safetensors'), '--calib-samples', '1']);
    expect(c.stderr).toMatch(/^error: -o .* lies inside the source model/);
    expect(await hashTree(w.work)).toBe(before);
    // beside the inputs is fine: the stats folder may hold the output folder
    const ok = await cli(['quantize', w.model, '-f', 'fp8', '--stats', w.stats, '-o', join(w.work, 'data', 'out')]);
    expect(ok.code, ok.stderr).toBe(0);
  });

  it('--overwrite replaces an earlier export or an empty folder, and refuses anything else', async () => {
    const w = await workspace('ws2');
    const out = join(w.work, 'out');
    const args = ['quantize', w.model, '-f', 'fp8', '--stats', w.stats, '-o', out, '--overwrite'];
    await mkdir(out);
    expect((await cli(args)).code).toBe(0); // empty
    expect((await cli(args)).code).toBe(0); // an earlier export
    const project = join(w.work, 'project');
    await mkdir(project);
    await writeFile(join(project, 'notes.txt'), 'mine');
    const r = await cli([...args.slice(0, -3), '-o', project, '--overwrite']);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/--overwrite replaces only an earlier rxquant export or an empty folder, and this folder holds something else \(e\.g\. "notes\.txt"\)/);
    expect(await readFile(join(project, 'notes.txt'), 'utf8')).toBe('mine');
  });
});

describe('one run per output', () => {
  it('two concurrent runs on one --out: one writes the export, the other is refused with a clear message', async () => {
    const w = await workspace('ws3');
    const out = join(w.work, 'out');
    const args = ['quantize', w.model, '-f', 'nvfp4', '--stats', w.stats, '-o', out, '--max-shard-size', '300KB'];
    const [a, b] = await Promise.all([cli(args), cli(args)]);
    const codes = [a.code, b.code].sort();
    expect(codes[0]).toBe(0);
    expect(codes[1]).not.toBe(0);
    const loser = a.code === 0 ? b : a;
    expect(loser.stderr).toMatch(/another rxquant run \(pid \d+, started .*\) is writing this output|output folder exists and is not empty/);
    expect((await cli(['verify', out])).code).toBe(0);
    expect((await readdir(w.work)).filter((n) => n.includes('rxquant-partial'))).toEqual([]);
  });

  it('in one process, a second writer on the same output is refused; a lock left by a dead process is taken over', async () => {
    const out = join(tmp, 'lock-out');
    const plan = planShards([{ name: 'x', dtype: 'F32', shape: [2] }], 1e9);
    const w1 = await ShardWriter.create(out, plan);
    await expect(ShardWriter.create(out, plan)).rejects.toThrow(/another rxquant run \(this process, started .*\) is writing this output/);
    await w1.write('x', new Uint8Array(8));
    await w1.finish();
    await stat(join(out, 'model.safetensors'));
    // a lock whose pid is gone (what SIGKILL leaves): taken over
    const dead = await new Promise<number>((resolve) => {
      const p = execFile('node', ['-e', '0'], () => resolve(p.pid!));
    });
    const out2 = join(tmp, 'lock-out2');
    await writeFile(join(tmp, '.lock-out2.rxquant-partial.lock'), JSON.stringify({ pid: dead, host: (await import('node:os')).hostname(), started: 'then' }));
    const w2 = await ShardWriter.create(out2, plan);
    await w2.write('x', new Uint8Array(8));
    await w2.finish();
    expect((await readdir(tmp)).includes('.lock-out2.rxquant-partial.lock')).toBe(false);
  });
});
