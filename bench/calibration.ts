/**
 * Calibration speed: tokens/s of the forward pass through one Llama-3.1-8B-shaped decoder layer
 * (hidden 4096, intermediate 14336, 32 heads, 8 KV heads, 512 tokens, f32), rxquant (onnxruntime
 * GEMMs) next to PyTorch (Debian python3-torch, OpenBLAS with the machine's CORETYPE override unset)
 * in the same run, single runs of each alternating so that a noisy neighbour slows both.
 * Also: each engine's GEMM share of its layer time, the layer's GFLOP/s against the machine's
 * measured GEMM peak (the faster of onnxruntime and OpenBLAS on the layer's largest GEMM shape), and
 * the marginal throughput through the CLI (`rxquant calibrate` of a 4-layer 8B-shaped checkpoint on
 * 2 x 512 minus 1 x 512 tokens, per layer). The peer needs `apt-get install python3-torch
 * libopenblas0-pthread` (without the latter, Debian's torch falls back to the reference BLAS and
 * runs ~30x slower).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { rmSync } from 'node:fs';
import { cpus } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { decoderLayer, prepareLayer, type LayerWeights, type LinearWeights, type PreparedGroup, type PreparedLayer } from '../src/forward/layer.js';
import { loadOrt, onnxGemm } from '../src/forward/gemm.js';
import { linearModel } from '../src/forward/onnx.js';
import { synthesize, withBundledTokenizer } from './synth.js';
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
import time, torch, sys, json
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
def gemms(x, xi):
    # the layer's seven linears alone (its GEMM time)
    for n in ('q', 'k', 'v', 'o', 'g', 'u'): x @ W[n].T
    xi @ W['dn'].T
def median(f, n):
    ts = []
    for _ in range(n):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    ts.sort(); return ts[len(ts)//2]
h = torch.randn(T, H, generator=g); xi = torch.randn(T, I, generator=g)
run = {'layer': lambda: layer(h), 'gemms': lambda: gemms(h, xi), 'peak': lambda: h @ W['g'].T}
with torch.no_grad():
    for f in run.values(): f()
    print('ready', flush=True)
    # one timing per command line, so the bench can interleave single runs with its own
    for line in sys.stdin:
        f = run[line.strip()]
        t = time.perf_counter(); f(); print(time.perf_counter() - t, flush=True)
`;

/**
 * PyTorch kept running beside the bench, timing one thing per request ('layer', 'gemms': the
 * layer's seven linears alone, 'peak': one [512, 4096] x [4096, 14336] GEMM), so single PyTorch and
 * rxquant runs alternate: this VM's speed drifts by 20-30% over minutes, and a drift then lands
 * on both alike.
 */
class TorchPeer {
  private lines: string[] = [];
  private waiting: ((l: string) => void)[] = [];

  private constructor(private readonly proc: ChildProcess) {
    createInterface({ input: proc.stdout! }).on('line', (l) => {
      const w = this.waiting.shift();
      if (w) w(l);
      else this.lines.push(l);
    });
  }

  private next(): Promise<string> {
    const l = this.lines.shift();
    return l !== undefined ? Promise.resolve(l) : new Promise((r) => this.waiting.push(r));
  }

  static async start(threads: number): Promise<TorchPeer | undefined> {
    const env: NodeJS.ProcessEnv = { ...process.env, OMP_NUM_THREADS: String(threads), OPENBLAS_NUM_THREADS: String(threads) };
    delete env.OPENBLAS_CORETYPE;
    delete env.OPENBLAS_L2_SIZE;
    const proc = spawn('/usr/bin/python3', ['-c', TORCH_SCRIPT, String(threads)], { env, stdio: ['pipe', 'pipe', 'pipe'] });
    let err = '';
    proc.stderr!.on('data', (d) => (err += String(d)));
    const peer = new TorchPeer(proc);
    const ready = await Promise.race([peer.next(), new Promise<string>((r) => proc.on('exit', () => r('exit')))]);
    if (ready !== 'ready') {
      process.stderr.write(`torch peer unavailable: ${err.slice(-300)}\n`);
      return undefined;
    }
    return peer;
  }

  async time(what: 'layer' | 'gemms' | 'peak'): Promise<number> {
    this.proc.stdin!.write(`${what}\n`);
    return Number(await this.next());
  }

  close(): void {
    this.proc.stdin!.end();
  }
}

/** A pause between the two engines' runs: OpenBLAS's and OpenMP's threads spin a while after a call, and would take a core from the next run. */
const settle = () => new Promise((r) => setTimeout(r, 300));

/** The layer's multiply-adds x 2: seven linears on T tokens, plus causal attention's two products (half the T x T scores). */
function layerFlops(): number {
  const H = 4096, I = 14336, q = 32 * 128, kv = 8 * 128;
  const linears = 2 * T * (H * q + 2 * H * kv + q * H + 3 * H * I);
  const attention = 2 * 2 * 32 * 128 * ((T * (T + 1)) / 2);
  return linears + attention;
}

/** The layer's GEMM groups timed as they run (q|k|v, o, gate/up with SiLU, down). */
function timedGemms(layer: PreparedLayer): { seconds: () => number; reset: () => void } {
  let ms = 0;
  const wrap = <F extends (...a: any[]) => Promise<any>>(f: F): F =>
    (async (...a: any[]) => {
      const t = performance.now();
      try {
        return await f(...a);
      } finally {
        ms += performance.now() - t;
      }
    }) as F;
  for (const k of ['qkv', 'o', 'gateUp', 'down'] as const) {
    const g: PreparedGroup = layer[k];
    layer[k] = { ...g, run: wrap(g.run.bind(g)), ...(g.runSwiGlu ? { runSwiGlu: wrap(g.runSwiGlu.bind(g)) } : {}), ...(g.runFused ? { runFused: wrap(g.runFused.bind(g)) } : {}) };
  }
  return { seconds: () => ms / 1000, reset: () => (ms = 0) };
}

/** Seconds of one [T, 4096] x [14336, 4096]^T Gemm on onnxruntime, alone (the median of `rounds`). */
async function ortPeakSeconds(ort: NonNullable<Awaited<ReturnType<typeof loadOrt>>>, threads: number, rounds: number): Promise<number> {
  const K = 4096, N = 14336;
  const session = await ort.InferenceSession.create(linearModel(K, N), { intraOpNumThreads: threads, interOpNumThreads: 1, graphOptimizationLevel: 'all' });
  const W = new ort.Tensor('float32', rand(N * K, 0.03, 11), [N, K]);
  const X = new ort.Tensor('float32', rand(T * K, 2, 12), [T, K]);
  const Y = new ort.Tensor('float32', new Float32Array(T * N), [T, N]);
  await session.run({ X, W }, { Y });
  const ts: number[] = [];
  for (let i = 0; i < rounds; i++) {
    const t = performance.now();
    await session.run({ X, W }, { Y });
    ts.push((performance.now() - t) / 1000);
  }
  await session.release();
  return median(ts);
}

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

/**
 * Seconds per layer of `rxquant calibrate` on a 4-layer 8B-shaped checkpoint for `samples` samples
 * of 512 tokens (the --json events' per-layer seconds, less the layer's load_seconds; layer 0 left
 * out: it also creates the engine's sessions), one run.
 */
function cliLayerSeconds(dir: string, samples: number): number[] {
  const out = join(dirname(dir), 'calib-stats.safetensors');
  try {
    const r = spawnSync('node', [join(ROOT, 'bin', 'rxquant.js'), 'calibrate', dir, '--calib-samples', String(samples), '-o', out, '--json'], { encoding: 'utf8', maxBuffer: 1 << 26 });
    if (r.status !== 0) throw new Error(`rxquant calibrate failed: ${r.stderr.slice(-1000)}`);
    const events = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as { stage: string; layer?: number; seconds?: number; load_seconds?: number });
    return events.filter((e) => e.stage === 'calibrate' && e.layer !== undefined && e.layer > 0).map((e) => e.seconds! - (e.load_seconds ?? 0));
  } finally {
    rmSync(out, { force: true });
  }
}

/**
 * Per layer, the median over rounds of the CLI's seconds on 1 and on 2 samples, and the median of
 * `layerSeconds()` (the bench's own layer, timed in each round next to the CLI runs: this VM's speed
 * drifts by 20-30% over minutes, so the two are compared within the same rounds).
 */
async function cliMarginal(dataDir: string, layerSeconds: () => Promise<number>, rounds = 3): Promise<{ one: number[]; two: number[]; bench: number }> {
  const model = join(dataDir, 'llama8b-4');
  const dir = join(dataDir, 'llama8b-4-tok');
  withBundledTokenizer(model, dir);
  try {
    const ones: number[][] = [], twos: number[][] = [], bench: number[] = [];
    for (let i = 0; i < rounds; i++) {
      bench.push(await layerSeconds());
      ones.push(cliLayerSeconds(dir, 1));
      twos.push(cliLayerSeconds(dir, 2));
      bench.push(await layerSeconds());
    }
    const per = (all: number[][]) => all[0]!.map((_, l) => median(all.map((r) => r[l]!)));
    return { one: per(ones), two: per(twos), bench: median(bench) };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export async function benchCalibration(dataDir: string, rounds = 12): Promise<string[]> {
  const ort = await loadOrt();
  if (!ort) return ['| calibration | onnxruntime-node not available |'];
  const H = 4096, d = 128;
  const lw = llama8bLayer();
  const { cos, sin } = ropeTables(CFG.rope, d, T);
  const h = rand(T * H, 2, 9);
  const flops = layerFlops();
  const peakFlops = 2 * T * 4096 * 14336;
  const rows: string[] = [
    '| engine | threads | s per layer (512 tokens) | tokens/s | vs PyTorch | GEMM share of the layer | layer GFLOP/s | of the GEMM peak |',
    '|---|---|---|---|---|---|---|---|',
  ];
  const peaks: string[] = [];
  const twoThreads = Math.min(2, cpus().length);
  let rx2 = 0;
  for (const threads of [1, twoThreads]) {
    const engine = onnxGemm(ort, threads);
    const layer = await prepareLayer(lw, engine);
    const gemm = timedGemms(layer);
    // decoderLayer writes its result over its input: each run gets a copy of the same h
    await decoderLayer(h.slice(), T, layer, CFG, cos, sin);
    const peer = await TorchPeer.start(threads);
    // single runs alternating with PyTorch's: a slow spell of the machine lands on both
    const rx: number[] = [], share: number[] = [], torch: { layer: number[]; gemms: number[]; peak: number[] } = { layer: [], gemms: [], peak: [] };
    for (let i = 0; i < rounds; i++) {
      const x = h.slice();
      gemm.reset();
      const t = performance.now();
      await decoderLayer(x, T, layer, CFG, cos, sin);
      const s = (performance.now() - t) / 1000;
      rx.push(s);
      share.push(gemm.seconds() / s);
      await settle();
      if (peer) {
        torch.layer.push(await peer.time('layer'));
        if (i % 3 === 0) torch.gemms.push(await peer.time('gemms'));
        await settle();
      }
    }
    await layer.release();
    engine.dropSpareBuffers?.(); // its sessions too
    // the GEMM peak, onnxruntime and OpenBLAS alternating
    const ortPeaks: number[] = [];
    for (let i = 0; i < 3; i++) {
      ortPeaks.push(await ortPeakSeconds(ort, threads, 3));
      await settle();
      if (peer) torch.peak.push(await peer.time('peak'), await peer.time('peak'), await peer.time('peak'));
      await settle();
    }
    peer?.close();
    const ortPeak = median(ortPeaks);
    const rxS = median(rx);
    if (threads === twoThreads) rx2 = rxS;
    const tl = torch.layer.length ? median(torch.layer) : undefined;
    const tg = torch.gemms.length ? median(torch.gemms) : undefined;
    const tp = torch.peak.length ? median(torch.peak) : undefined;
    const peak = Math.max(peakFlops / ortPeak, tp ? peakFlops / tp : 0);
    peaks.push(`${threads} thread(s): onnxruntime ${(peakFlops / ortPeak / 1e9).toFixed(0)} GFLOP/s, OpenBLAS ${tp ? (peakFlops / tp / 1e9).toFixed(0) : 'n/a'} GFLOP/s`);
    const gf = (s: number) => (flops / s / 1e9).toFixed(0);
    rows.push(`| rxquant (onnxruntime) | ${threads} | ${rxS.toFixed(3)} | ${(T / rxS).toFixed(0)} | ${tl ? (tl / rxS).toFixed(2) + 'x' : 'n/a'} | ${(median(share) * 100).toFixed(0)}% | ${gf(rxS)} | ${((flops / rxS / peak) * 100).toFixed(0)}% |`);
    if (tl && tg) rows.push(`| PyTorch 1.13 (Debian, OpenBLAS) | ${threads} | ${tl.toFixed(3)} | ${(T / tl).toFixed(0)} | 1.00x | ${((tg / tl) * 100).toFixed(0)}% | ${gf(tl)} | ${((flops / tl / peak) * 100).toFixed(0)}% |`);
  }
  rows.push('', `GEMM peak ([512, 4096] x [4096, 14336], f32): ${peaks.join('; ')}. Layer work: ${(flops / 1e9).toFixed(1)} GFLOP.`);
  // marginal throughput through the CLI (2 threads, as calibrate runs on this machine), next to the
  // bench's layer on 2 threads timed in the same rounds
  await synthesize(join(dataDir, 'llama8b-4'), 4);
  const engine = onnxGemm(ort, twoThreads);
  const layer = await prepareLayer(lw, engine);
  await decoderLayer(h.slice(), T, layer, CFG, cos, sin);
  const { one, two, bench } = await cliMarginal(dataDir, async () => {
    // after any pause of this process (a CLI run, or a plain `sleep 10`) its first two runs are
    // slow on this VM (1.27-1.36 s, then 0.77-0.91, against 0.73-0.78): two runs to warm up, then
    // the median of three
    const ts: number[] = [];
    for (let i = 0; i < 5; i++) {
      const t = performance.now();
      await decoderLayer(h.slice(), T, layer, CFG, cos, sin);
      ts.push((performance.now() - t) / 1000);
    }
    return median(ts.slice(2));
  });
  await layer.release();
  engine.dropSpareBuffers?.();
  const marginal = two.map((s, i) => T / (s - one[i]!));
  rows.push(
    '',
    `rxquant calibrate, 4-layer 8B-shaped checkpoint, layers 1-3 (load time left out; medians of 3 rounds): 1 x 512 tokens ${one.map((s) => s.toFixed(2)).join(' / ')} s, 2 x 512 tokens ${two.map((s) => s.toFixed(2)).join(' / ')} s; ` +
      `marginal ${marginal.map((v) => v.toFixed(0)).join(' / ')} tokens/s per layer (median ${median(marginal).toFixed(0)}) against the bench's layer in the same rounds ${(T / bench).toFixed(0)} on ${twoThreads} threads: ${((median(marginal) / (T / bench) - 1) * 100).toFixed(0)}%` +
      ` (the table's figure above: ${(T / rx2).toFixed(0)}).`,
  );
  return rows;
}
