/**
 * Which engines load an export, from the conditions their loaders check (spec engines.md §2.3,
 * §6 point 12): vLLM's block-FP8 linear (fp8_pb_wo) refuses in/out features that are not
 * multiples of 128, and its merged QKV / gate-up loaders fail on such a member. `plan` warns
 * before the export; `verify --engine` exits 1 when that engine will not load it.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { exportCheckpoint, loadStats } from '../src/index.js';
import { verifyExport } from '../src/verify.js';
import { planExport } from '../src/plan-report.js';
import { DATA, ROOT, STORIES } from './helpers.js';

const BIN = join(ROOT, 'bin', 'rxquant.js');
const MINI = join(DATA, 'stories-mini', 'hf');

function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile('node', [BIN, ...args], (err, stdout, stderr) => resolve({ code: err ? (err as { code?: number }).code ?? 1 : 0, stdout, stderr }));
  });
}

let tmp: string;
beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'rxq-engines-'));
});
afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});

describe('engine loading conditions', () => {
  it('fp8_pb_wo of stories260K (in_features 64): plan warns, verify says vLLM will not load it, --engine vllm exits 1, trtllm 0', async () => {
    const out = join(tmp, 's260k-pbwo');
    const plan = await planExport(STORIES, 'fp8_pb_wo', { out });
    const vllm = plan.engines.find((e) => e.engine === 'vLLM')!;
    expect(vllm.loads).toBe(false);
    expect(vllm.blockers![0]).toMatch(/model\.layers\.0\.self_attn\.q_proj: in_features 64 is not a multiple of 128/);
    expect(plan.warnings.some((w) => /^vLLM will not load this export: .*in_features 64 .*\(and 34 more\)/.test(w))).toBe(true);
    expect(plan.engines.find((e) => e.engine === 'TensorRT-LLM')!.loads).toBe(true);

    await exportCheckpoint({ model: STORIES, format: 'fp8_pb_wo', out, workers: 0 });
    const r = await verifyExport(out);
    expect(r.failures).toEqual([]);
    expect(r.engines.find((e) => e.engine === 'vLLM')!.loads).toBe(false);
    expect(r.engines.find((e) => e.engine === 'SGLang')!.loads).toBe(false);
    const v = await cli(['verify', out, '--engine', 'vllm']);
    expect(v.code).toBe(1);
    expect(v.stdout).toMatch(/does not load in vLLM: .*in_features (64|172) is not a multiple of 128/);
    expect(v.stdout).toMatch(/\.\.\. and 29 more/);
    expect(v.stdout).not.toMatch(/TensorRT-LLM/);
    const t = await cli(['verify', out, '--engine', 'trtllm']);
    expect(t.code).toBe(0);
    expect(t.stdout).toMatch(/loads in TensorRT-LLM/);
    expect((await cli(['verify', out])).code).toBe(0); // the checklist itself passes
    expect((await cli(['verify', out, '--engine', 'vlm'])).stderr).toMatch(/vllm, sglang, trtllm/);
  });

  it('fp8_pb_wo of stories-mini: k/v (64 rows, fused with q) block vLLM; with q/k/v excluded every shape is a multiple of 128 and vLLM loads it', async () => {
    const stats = await loadStats(join(DATA, 'stories-mini', 'reference', 'calib.safetensors'));
    const a = join(tmp, 'mini-pbwo');
    await exportCheckpoint({ model: MINI, format: 'fp8_pb_wo', out: a, stats, workers: 0 });
    const ra = await verifyExport(a);
    const va = ra.engines.find((e) => e.engine === 'vLLM')!;
    expect(va.loads).toBe(false);
    expect(va.blockers).toEqual(
      [0, 1, 2, 3].flatMap((l) => ['k_proj', 'v_proj'].map((p) => `model.layers.${l}.self_attn.${p}: out_features 64 is not a multiple of 128 (vLLM's merged QKV / gate-up loader fails on a member)`)),
    );
    const b = join(tmp, 'mini-pbwo-noqkv');
    await exportCheckpoint({ model: MINI, format: 'fp8_pb_wo', out: b, stats, exclude: ['*self_attn.q_proj', '*self_attn.k_proj', '*self_attn.v_proj'], workers: 0 });
    expect((await verifyExport(b)).engines.find((e) => e.engine === 'vLLM')!.loads).toBe(true);
    expect((await cli(['verify', b, '--engine', 'vllm'])).code).toBe(0);
  });

  it('AWQ formats do not load in vLLM, whatever the shapes', async () => {
    const plan = await planExport(MINI, 'int4_awq', { out: join(tmp, 'x') });
    expect(plan.engines.find((e) => e.engine === 'vLLM')!.loads).toBe(false);
    expect(plan.engines.find((e) => e.engine === 'TensorRT-LLM')!.loads).toBe(true);
  });
});
