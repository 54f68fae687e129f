/**
 * Calibration speed: tokens/s of the forward pass through one Llama-3.1-8B-shaped decoder layer
 * (hidden 4096, intermediate 14336, 32 heads, 8 KV heads, 512 tokens, f32), rxquant (onnxruntime
 * GEMMs) next to PyTorch (Debian python3-torch, OpenBLAS with the machine's CORETYPE override unset)
 * in the same run. The peer needs `apt-get install python3-torch libopenblas0-pthread` (without the
 * latter, Debian's torch falls back to the reference BLAS and runs ~30x slower).
 */
import { spawnSync } from 'node:child_process';
import { cpus } from 'node:os';
import { decoderLayer, prepareLayer, type LayerWeights, type LinearWeights } from '../src/forward/layer.js';
import { loadOrt, onnxGemm } from '../src/forward/gemm.js';
import { ropeTables } from '../src/forward/rope.js';
import type { ModelConfig } from '../src/models/config.js';
import { median } from './util.js';

export const CFG: ModelConfig = {
  modelType: 'llama', hiddenSize: 4096, intermediateSize: 14336, numLayers: 1, numHeads: 32, numKvHeads: 8, headDim: 128,
  vocabSize: 128256, rmsNormEps: 1e-5, rope: { theta: 500000, type: 'default' }, tieWordEmbeddings: false, attentionBias: false,
  torchDtype: 'bfloat16', bosTokenId: 1,
};
export const T = 512;

/** Deterministic uniform values in [-scale/2, scale/2), each passed through `round` (default: f32). */
export function rand(n: number, scale: number, seed: number, round: (x: number) => number = (x) => x): Float32Array {
  const a = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    a[i] = round((s / 2 ** 32 - 0.5) * scale);
  }
  return a;
}

/** The Llama-3.1-8B-shaped layer both benches run: random weights scaled by 1/sqrt(in), norms of ones. */
export function llama8bLayer(round?: (x: number) => number): LayerWeights {
  const H = 4096, I = 14336, d = 128;
  const lin = (N: number, K: number, seed: number): LinearWeights => ({ w: rand(N * K, 2 / Math.sqrt(K), seed, round), N, K });
  return {
    q: lin(32 * d, H, 1), k: lin(8 * d, H, 2), v: lin(8 * d, H, 3), o: lin(H, 32 * d, 4),
    gate: lin(I, H, 5), up: lin(I, H, 6), down: lin(H, I, 7),
    inputNorm: new Float32Array(H).fill(1), postNorm: new Float32Array(H).fill(1),
  };
}

const TORCH_SCRIPT = `
import time, torch, sys
threads = int(sys.argv[1]); torch.set_num_threads(threads)
H, I, nH, nKV, d, T = 4096, 14336, 32, 8, 128, 512
g = torch.Generator().manual_seed(0)
W = {n: torch.randn(o, i, generator=g) / i**0.5 for n, o, i in [('q', nH*d, H), ('k', nKV*d, H), ('v', nKV*d, H), ('o', H, nH*d), ('g', I, H), ('u', I, H), ('dn', H, I)]}
n1 = torch.ones(H); n2 = torch.ones(H)
inv = 1.0 / (500000 ** (torch.arange(0, d, 2).float() / d)); f = torch.outer(torch.arange(T).float(), inv); emb = torch.cat([f, f], -1); cos, sin = emb.cos(), emb.sin()
def rot(x): return torch.cat([-x[..., d//2:], x[..., :d//2]], -1)
def rms(x, w): return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5))
mask = torch.full((T, T), float('-inf')).triu(1)
def layer(h):
    x = rms(h, n1)
    q = (x @ W['q'].T).view(T, nH, d).transpose(0, 1); k = (x @ W['k'].T).view(T, nKV, d).transpose(0, 1); v = (x @ W['v'].T).view(T, nKV, d).transpose(0, 1)
    q = q * cos + rot(q) * sin; k = k * cos + rot(k) * sin
    k = k.repeat_interleave(nH // nKV, 0); v = v.repeat_interleave(nH // nKV, 0)
    a = torch.softmax(q @ k.transpose(1, 2) / d**0.5 + mask, -1) @ v
    h = h + a.transpose(0, 1).reshape(T, H) @ W['o'].T
    x = rms(h, n2)
    return h + (torch.nn.functional.silu(x @ W['g'].T) * (x @ W['u'].T)) @ W['dn'].T
h = torch.randn(T, H, generator=g)
with torch.no_grad():
    layer(h)
    ts = []
    for _ in range(5):
        t = time.perf_counter(); layer(h); ts.append(time.perf_counter() - t)
ts.sort(); print(ts[len(ts)//2])
`;

function torchSeconds(threads: number): number | undefined {
  const env: NodeJS.ProcessEnv = { ...process.env, OMP_NUM_THREADS: String(threads), OPENBLAS_NUM_THREADS: String(threads) };
  delete env.OPENBLAS_CORETYPE;
  delete env.OPENBLAS_L2_SIZE;
  const r = spawnSync('/usr/bin/python3', ['-c', TORCH_SCRIPT, String(threads)], { env, encoding: 'utf8' });
  if (r.status !== 0) {
    process.stderr.write(`torch peer unavailable: ${r.stderr.slice(-300)}\n`);
    return undefined;
  }
  return Number(r.stdout.trim());
}

export async function benchCalibration(): Promise<string[]> {
  const ort = await loadOrt();
  if (!ort) return ['| calibration | onnxruntime-node not available |'];
  const H = 4096, d = 128;
  const lw = llama8bLayer();
  const { cos, sin } = ropeTables(CFG.rope, d, T);
  const h = rand(T * H, 2, 9);
  const rows: string[] = ['| engine | threads | s per layer (512 tokens) | tokens/s | vs PyTorch |', '|---|---|---|---|---|'];
  const results: { threads: number; rx: number; torch?: number }[] = [];
  for (const threads of [1, Math.min(2, cpus().length)]) {
    const layer = await prepareLayer(lw, onnxGemm(ort, threads));
    // decoderLayer writes its result over its input: each run gets a copy of the same h
    await decoderLayer(h.slice(), T, layer, CFG, cos, sin);
    const ts: number[] = [];
    for (let i = 0; i < 3; i++) {
      const x = h.slice();
      const t = performance.now();
      await decoderLayer(x, T, layer, CFG, cos, sin);
      ts.push((performance.now() - t) / 1000);
    }
    await layer.release();
    results.push({ threads, rx: median(ts), torch: torchSeconds(threads) });
  }
  for (const r of results) {
    rows.push(`| rxquant (onnxruntime: GEMMs and attention) | ${r.threads} | ${r.rx.toFixed(3)} | ${(T / r.rx).toFixed(0)} | ${r.torch ? (r.torch / r.rx).toFixed(2) + 'x' : 'n/a'} |`);
    if (r.torch) rows.push(`| PyTorch ${'1.13 (Debian, OpenBLAS)'} | ${r.threads} | ${r.torch.toFixed(3)} | ${(T / r.torch).toFixed(0)} | 1.00x |`);
  }
  return rows;
}
