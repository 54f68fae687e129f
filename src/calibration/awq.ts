/**
 * AWQ-lite, ModelOpt's `awq_lite` search (../shared/spec/modelopt-format.md §11.3), for one linear at a
 * time on the inputs it saw during its layer's calibration forward pass (see AwqInputCache):
 *
 *   w_mean[k] = mean over rows n of |W[n, k]| / (max |W| over k's group of G in row n + tiny)
 *   x_mean[k] = mean over batches of (mean over the batch's tokens of |x[t, k]|)      (a batch = one sample)
 *   for α = 0.0, 0.1, ..., 1.0 (11 candidates):
 *     s_α    = clamp(x_mean^α / (w_mean^(1-α) + tiny), 1e-4, 1e4);   s_α = s_α / sqrt(max(s_α) · min(s_α))
 *     loss_α = Σ over batches of mean over (t, n) of ((x · p_α) · fq(W · diag(s_α))^T − x · W^T)^2,
 *              p_α = dtype(1 / s_α), the product W · s_α with s_α cast to the weight dtype and rounded to it
 *   α* = the first α with the least loss;  pre_quant_scale = 1 / s_α*.
 *
 * fq is the export format's fake quantization (`QuantFormat.fakeQuantizeInPlace`: what an engine computes
 * with); activations stay unquantized in the search, and the output passed on to the next linear and
 * layer is the unquantized one, so the search never changes what later layers see. A linear that saw
 * no tokens (an expert nothing was routed to) gets a pre_quant_scale of ones (§11.3, step 4).
 *
 * (ModelOpt sets the input quantizer's pre_quant_scale to dtype(1/s) and the weight quantizer's to
 * dtype(s); for F32 weights both are plain f32.) All arithmetic on scales is f32 (Math.fround after each operation, as torch does in f32); losses
 * are summed in f64. The candidates' GEMMs run on the calibration's engine: (x · p) · fq(W s)^T is
 * computed as x · (fq(W s) · diag(p))^T, so the reference output and several candidates share one GEMM
 * over the same input (their weights side by side, within a memory budget).
 */
import type { GemmEngine } from '../forward/gemm.js';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Piscina } from 'piscina';
import { CANDIDATE_ROWS, candidateAmax, candidateRowsInto, castScales, rowsScaledInto } from './awq-candidate.js';
import type { AwqBandTask } from './awq-worker.js';
import type { QuantFormat } from '../formats/format.js';
import { roundToDType } from '../codecs/float.js';
import type { FloatDType } from '../safetensors/dtypes.js';

/** f32's smallest normal number (torch.finfo(float32).tiny), the "tiny" of the formulas above. */
export const F32_TINY = 2 ** -126;
/** The α grid: numpy's arange(0, 1 + 0.1, 0.1) = i · 0.1 for i = 0..10. */
export const AWQ_ALPHAS: readonly number[] = Array.from({ length: 11 }, (_, i) => i * 0.1);
/** Weights of the candidates prepared at once (the reference W, then as many candidates as fit). */
export const DEFAULT_AWQ_CANDIDATE_BYTES = 2 * 2 ** 30;

/** Candidates per GEMM within the budget, the sets made equal so that each reuses the last one's buffer. */
function candidatesPerSet(params: number, budgetBytes: number): number {
  const fit = Math.max(1, Math.min(AWQ_ALPHAS.length, Math.floor(budgetBytes / (params * 4)) - 1));
  return Math.ceil(AWQ_ALPHAS.length / Math.ceil(AWQ_ALPHAS.length / fit));
}

/** Bytes of the search's candidates buffer for a linear of `params` weights: the reference and one set of candidates in f32. */
export function awqCandidateBytes(params: number, budgetBytes = DEFAULT_AWQ_CANDIDATE_BYTES): number {
  return (candidatesPerSet(params, budgetBytes) + 1) * params * 4;
}

/** w_mean [K]: each |W[n, k]| over its row's group maximum (+ tiny), averaged over the N rows (K a multiple of G). */
export function awqWeightMean(w: Float32Array, N: number, K: number, G: number): Float32Array {
  const sum = new Float64Array(K);
  for (let n = 0; n < N; n++) {
    const row = n * K;
    for (let g = 0; g < K; g += G) {
      let m = 0;
      for (let k = g; k < g + G; k++) m = Math.max(m, Math.abs(w[row + k]!));
      const d = Math.fround(m + F32_TINY);
      for (let k = g; k < g + G; k++) sum[k] = sum[k]! + Math.fround(Math.abs(w[row + k]!) / d);
    }
  }
  return Float32Array.from(sum, (s) => s / N);
}

/** s_α [K]: clamp(x_mean^α / (w_mean^(1-α) + tiny), 1e-4, 1e4), normalized by sqrt(max · min). */
export function awqScale(xMean: Float32Array, wMean: Float32Array, alpha: number): Float32Array {
  const K = xMean.length;
  const s = new Float32Array(K);
  const a = Math.fround(alpha), b = Math.fround(1 - alpha);
  let max = 0, min = Infinity;
  for (let k = 0; k < K; k++) {
    const num = Math.fround(Math.pow(xMean[k]!, a));
    const den = Math.fround(Math.fround(Math.pow(wMean[k]!, b)) + F32_TINY);
    const v = Math.min(1e4, Math.max(1e-4, Math.fround(num / den)));
    s[k] = v;
    if (v > max) max = v;
    if (v < min) min = v;
  }
  const norm = Math.fround(Math.sqrt(Math.fround(max * min)));
  for (let k = 0; k < K; k++) s[k] = Math.fround(s[k]! / norm);
  return s;
}

/**
 * The search's large buffers, kept from one linear (and layer) to the next: fresh memory costs more
 * than the work done in it here (page faults measured at ~2.4 ms per MB against 0.6 ms per MB for
 * the W·s pass itself), so one grow-only buffer each for the [N, K] scratch and the candidates' rows.
 */
export class AwqWorkspace {
  private scratchBuf = new Float32Array(0);
  private candidatesBuf = new Float32Array(0);
  private sharedW: Float32Array = new Float32Array(0);
  private sharedOut: Float32Array = new Float32Array(0);
  private piscina: Piscina | undefined;
  private closed = false;

  /** @param workers threads that build candidates side by side (0: on this thread) */
  constructor(readonly workers = 0) {}

  scratch(n: number): Float32Array {
    if (this.scratchBuf.length < n) this.scratchBuf = new Float32Array(n);
    return this.scratchBuf.subarray(0, n);
  }
  candidates(n: number): Float32Array {
    if (this.candidatesBuf.length < n) this.candidatesBuf = new Float32Array(n);
    return this.candidatesBuf.subarray(0, n);
  }
  /** The weight copied into shared memory for the workers. */
  shared(w: Float32Array): Float32Array {
    if (this.sharedW.length < w.length) this.sharedW = new Float32Array(new SharedArrayBuffer(w.length * 4));
    const v = this.sharedW.subarray(0, w.length);
    v.set(w);
    return v;
  }
  /** A shared [n] output for the workers (onnxruntime takes no SharedArrayBuffer, so it is copied out). */
  sharedOutput(n: number): Float32Array {
    if (this.sharedOut.length < n) this.sharedOut = new Float32Array(new SharedArrayBuffer(n * 4));
    return this.sharedOut.subarray(0, n);
  }
  pool(): Piscina | undefined {
    if (this.workers <= 0 || this.closed) return undefined;
    const file = workerFile();
    if (!file) return undefined; // not built (running from sources without dist/): this thread
    this.piscina ??= new Piscina({ filename: file, minThreads: this.workers, maxThreads: this.workers, idleTimeout: 1000 });
    return this.piscina;
  }
  async close(): Promise<void> {
    this.closed = true;
    await this.piscina?.destroy();
    this.piscina = undefined;
  }
}

/** The compiled worker beside this file in dist/, or dist/ mirrored when running from TypeScript sources. */
function workerFile(): string | undefined {
  const here = fileURLToPath(import.meta.url);
  return [here.replace(/awq\.(ts|js)$/, 'awq-worker.js'), here.replace(/[\\/]src[\\/]calibration[\\/]awq\.ts$/, '/dist/src/calibration/awq-worker.js')].find((p) => p.endsWith('.js') && existsSync(p));
}

/** One batch of a linear's input: x [T, K]. */
export interface AwqBatch {
  x: Float32Array;
  T: number;
}

/** x_mean [K]: the mean over batches (those with tokens) of each batch's mean |x| per channel. */
export async function awqInputMean(batches: AsyncIterable<AwqBatch>, K: number): Promise<Float32Array> {
  const acc = new Float64Array(K);
  const s = new Float64Array(K);
  let n = 0;
  for await (const { x, T } of batches) {
    if (T === 0) continue;
    s.fill(0);
    for (let t = 0; t < T; t++) for (let k = 0; k < K; k++) s[k] = s[k]! + Math.abs(x[t * K + k]!);
    for (let k = 0; k < K; k++) acc[k] = acc[k]! + Math.fround(s[k]! / T);
    n++;
  }
  return Float32Array.from(acc, (v) => (n === 0 ? 0 : v / n));
}

export interface AwqLiteResult {
  /** loss per α of AWQ_ALPHAS. */
  loss: Float64Array;
  /** Index of α* in AWQ_ALPHAS (-1: the linear saw no tokens). */
  best: number;
  /** 1 / s_α* (ones when the linear saw no tokens), f32. */
  preQuantScale: Float32Array;
  /** Where the time went: building the candidates (fake quantization, copies, engine setup), running their GEMMs and losses. */
  seconds: { candidates: number; gemm: number };
}

export interface AwqLinear {
  /** W [N, K] in f32. */
  w: Float32Array;
  N: number;
  K: number;
  /** The weight's stored dtype (the scales are cast to it, as in ModelOpt). */
  dtype: FloatDType;
}

/**
 * The search for one linear. `batches` yields its inputs (each read once per group of candidates);
 * `xMean` is their x_mean. The weights of the reference and of the candidates prepared together stay
 * under `budgetBytes` (at least one candidate at a time).
 */
export async function awqLiteSearch(
  lin: AwqLinear,
  fmt: Pick<QuantFormat, 'fakeQuantizeInPlace' | 'groupSize' | 'name'>,
  xMean: Float32Array,
  batches: () => AsyncIterable<AwqBatch>,
  gemm: GemmEngine,
  budgetBytes = DEFAULT_AWQ_CANDIDATE_BYTES,
  workspace = new AwqWorkspace(),
): Promise<AwqLiteResult> {
  const { w, N, K } = lin;
  if (!fmt.fakeQuantizeInPlace || !fmt.groupSize) throw new Error(`format ${fmt.name} has no AWQ fake quantization`);
  const seen = xMean.some((v) => v !== 0) || (await hasTokens(batches()));
  if (!seen) return { loss: new Float64Array(AWQ_ALPHAS.length), best: -1, preQuantScale: new Float32Array(K).fill(1), seconds: { candidates: 0, gemm: 0 } };
  const wMean = awqWeightMean(w, N, K, fmt.groupSize);
  const r = await gridSearch(lin, fmt, AWQ_ALPHAS.map((alpha) => ({ s: awqScale(xMean, wMean, alpha), clip: 1 })), batches, gemm, budgetBytes, workspace);
  const s = awqScale(xMean, wMean, AWQ_ALPHAS[r.best]!);
  return { ...r, preQuantScale: s.map((v) => Math.fround(1 / v)) };
}

/** AWQ-clip's ratios (spec §11.4): 0.50, 0.55, ..., 0.95, then 1.0. */
export const AWQ_CLIP_RATIOS: readonly number[] = [...Array.from({ length: 10 }, (_, i) => Math.fround(0.5 + 0.05 * i)), 1]; // f32, as torch multiplies an f32 amax by them

/**
 * AWQ-clip of a per-tensor amax (NVFP4, spec §11.4): candidates fq(W s) with the global amax times
 * each ratio, scored on the full output as in AWQ-lite; `s` the scale AWQ-lite chose (ones without it).
 */
export async function awqClipGlobalSearch(
  lin: AwqLinear,
  fmt: Pick<QuantFormat, 'fakeQuantizeInPlace' | 'name'>,
  s: Float32Array,
  batches: () => AsyncIterable<AwqBatch>,
  gemm: GemmEngine,
  budgetBytes = DEFAULT_AWQ_CANDIDATE_BYTES,
  workspace = new AwqWorkspace(),
): Promise<{ loss: Float64Array; best: number; ratio: number }> {
  if (!(await hasTokens(batches()))) return { loss: new Float64Array(AWQ_CLIP_RATIOS.length), best: -1, ratio: 1 };
  const r = await gridSearch(lin, fmt, AWQ_CLIP_RATIOS.map((clip) => ({ s, clip })), batches, gemm, budgetBytes, workspace);
  return { loss: r.loss, best: r.best, ratio: AWQ_CLIP_RATIOS[r.best]! };
}

/** Most tokens per batch AWQ-clip's per-block search looks at (ModelOpt's max_tokens_per_batch). */
export const AWQ_CLIP_TOKENS = 64;

/**
 * AWQ-clip of per-block amaxes (INT4, spec §11.4): for every (row n, group g) the ratio whose
 * quantized block output is closest to the unquantized one, summed over batches of
 * mean over tokens of (x'[t, g] · (Wq_r[n, g] − W'[n, g]))², with W' = dtype(W · dtype(s)) and
 * x' = x · dtype(1/s) (the smoothed weight and input), at most 64 tokens of each batch (every
 * ceil(T/64)-th). The block outputs x'[t, g] · (Wq_r − W')[n, g]^T are GEMMs on the calibration's
 * engine, one group column at a time with the 11 ratios side by side. Returns the chosen ratio per
 * block, [N, K/G] (ones for a linear that saw no tokens).
 */
export async function awqClipBlockSearch(
  lin: AwqLinear,
  fmt: Pick<QuantFormat, 'fakeQuantizeInPlace' | 'groupSize' | 'name'>,
  s: Float32Array,
  batches: () => AsyncIterable<AwqBatch>,
  gemm: GemmEngine,
): Promise<Float32Array> {
  const { w, N, K, dtype } = lin;
  const G = fmt.groupSize!;
  const fq = fmt.fakeQuantizeInPlace!;
  const ng = K / G;
  const R = AWQ_CLIP_RATIOS.length;
  const { sw, p } = castScales(s, dtype);
  // the subsampled, smoothed tokens of every batch: x'[t] = x[t] · p, every ceil(T/64)-th token
  const xs: { x: Float32Array; T: number }[] = [];
  for await (const { x, T } of batches()) {
    if (T === 0) continue;
    const stride = Math.ceil(T / AWQ_CLIP_TOKENS);
    const n = Math.ceil(T / stride);
    const sub = new Float32Array(n * K);
    for (let i = 0; i < n; i++) for (let k = 0; k < K; k++) sub[i * K + k] = Math.fround(x[i * stride * K + k]! * p[k]!);
    xs.push({ x: sub, T: n });
  }
  const ratios = new Float32Array(N * ng).fill(1);
  if (xs.length === 0) return ratios;
  // one group column at a time: its blocks W'[:, g] fake-quantized at every ratio, the errors
  // Wq(r) − W' side by side as one linear [R·N, G] on the engine, run on each batch's x'[:, g]
  const blk = new Float32Array(N * G), q = new Float32Array(N * G), errW = new Float32Array(R * N * G);
  const xg = new Float32Array(AWQ_CLIP_TOKENS * G);
  const err = new Float64Array(R * N);
  for (let g = 0; g < ng; g++) {
    for (let n = 0; n < N; n++) for (let j = 0; j < G; j++) blk[n * G + j] = roundToDType(Math.fround(w[n * K + g * G + j]! * sw[g * G + j]!), dtype);
    for (let r = 0; r < R; r++) {
      q.set(blk);
      fq(q, N, G, 0, AWQ_CLIP_RATIOS[r]!);
      for (let i = 0; i < N * G; i++) errW[r * N * G + i] = q[i]! - blk[i]!;
    }
    const prepared = await gemm.prepare({ w: errW, N: R * N, K: G });
    err.fill(0);
    try {
      for (const b of xs) {
        for (let i = 0; i < b.T; i++) for (let j = 0; j < G; j++) xg[i * G + j] = b.x[i * K + g * G + j]!;
        const y = await prepared.run(xg.subarray(0, b.T * G), b.T); // [T', R·N]: each block's output error
        for (let i = 0; i < b.T; i++) {
          const o = i * R * N;
          for (let c = 0; c < R * N; c++) err[c] = err[c]! + (y[o + c]! * y[o + c]!) / b.T;
        }
      }
    } finally {
      await prepared.release();
    }
    for (let n = 0; n < N; n++) {
      let best = 0;
      for (let r = 1; r < R; r++) if (err[r * N + n]! < err[best * N + n]!) best = r;
      ratios[n * ng + g] = AWQ_CLIP_RATIOS[best]!;
    }
  }
  gemm.dropSpareBuffers?.();
  return ratios;
}

/**
 * Scores candidates fq(dtype(W · diag(dtype(s)))) (amax times `clip`) against the unquantized output
 * x · W^T on every batch: loss = Σ batches mean((x · dtype(1/s)) · fq(...)^T − x · W^T)². Returns
 * each candidate's loss and the first of least loss.
 */
async function gridSearch(
  lin: AwqLinear,
  fmt: Pick<QuantFormat, 'fakeQuantizeInPlace' | 'name'>,
  candidates: { s: Float32Array; clip: number }[],
  batches: () => AsyncIterable<AwqBatch>,
  gemm: GemmEngine,
  budgetBytes: number,
  workspace: AwqWorkspace,
): Promise<{ loss: Float64Array; best: number; seconds: { candidates: number; gemm: number } }> {
  const { N, K } = lin;
  const fqInPlace = fmt.fakeQuantizeInPlace!;
  const loss = new Float64Array(candidates.length);
  const seconds = { candidates: 0, gemm: 0 };
  const perSet = candidatesPerSet(N * K, budgetBytes);
  const scratch = workspace.scratch(CANDIDATE_ROWS * K);
  for (let a0 = 0; a0 < candidates.length; a0 += perSet) {
    const set = candidates.slice(a0, a0 + perSet);
    let t0 = performance.now();
    const Nt = (set.length + 1) * N;
    const all = workspace.candidates(Nt * K); // [Nt, K]: the reference W, then each candidate
    await buildSet(all, lin, fmt.name, fqInPlace, set, workspace, scratch);
    const prepared = await gemm.prepare({ w: all, N: Nt, K });
    seconds.candidates += (performance.now() - t0) / 1000;
    t0 = performance.now();
    try {
      for await (const { x, T } of batches()) {
        if (T === 0) continue;
        const y = await prepared.run(x, T); // [T, (1 + candidates) * N]: reference, then each candidate
        for (let j = 0; j < set.length; j++) {
          let sum = 0;
          const o = (j + 1) * N;
          for (let t = 0; t < T; t++) {
            const r = t * Nt;
            for (let n = 0; n < N; n++) {
              const d = Math.fround(y[r + o + n]! - y[r + n]!);
              sum += d * d;
            }
          }
          loss[a0 + j] = loss[a0 + j]! + sum / (T * N);
        }
      }
    } finally {
      await prepared.release();
      seconds.gemm += (performance.now() - t0) / 1000;
    }
  }
  gemm.dropSpareBuffers?.(); // the workspace keeps the candidates' buffer; the engine need not
  let best = 0;
  for (let i = 1; i < loss.length; i++) if (loss[i]! < loss[best]!) best = i;
  return { loss, best, seconds };
}

async function hasTokens(batches: AsyncIterable<AwqBatch>): Promise<boolean> {
  for await (const b of batches) if (b.T > 0) return true;
  return false;
}

/**
 * Writes the reference W and each candidate one after the other into all [Nt, K]. With workers,
 * they build bands of rows of one candidate at a time in shared memory (amaxes first, over the
 * same bands), copied into `all` after this thread copies the reference; else all here.
 */
async function buildSet(
  all: Float32Array, lin: AwqLinear, format: string, fq: NonNullable<QuantFormat['fakeQuantizeInPlace']>,
  set: { s: Float32Array; clip: number }[], workspace: AwqWorkspace, scratch: Float32Array,
): Promise<void> {
  const { w, N, K, dtype } = lin;
  const pool = workspace.pool();
  if (!pool || N < 2 * CANDIDATE_ROWS) {
    rowsScaledInto(all, 0, w, K, 0, N);
    set.forEach((c, j) => {
      const { sw, p } = castScales(c.s, dtype);
      const amax = roundToDType(candidateAmax(w, K, 0, N, sw), dtype);
      candidateRowsInto(all, (j + 1) * N, w, K, 0, N, sw, p, amax, fq, dtype, scratch, c.clip);
    });
    return;
  }
  const ws = workspace.shared(w);
  const bands: [number, number][] = [];
  const per = Math.ceil(N / workspace.workers / CANDIDATE_ROWS) * CANDIDATE_ROWS;
  for (let n0 = 0; n0 < N; n0 += per) bands.push([n0, Math.min(N, n0 + per)]);
  const base = { format, dtype, w: ws, K };
  const parts = await Promise.all(bands.map(([n0, n1]) => pool.run({ ...base, phase: 'amax', n0, n1, candidates: set } satisfies AwqBandTask) as Promise<number[]>));
  const amaxes = set.map((_, j) => roundToDType(Math.max(...parts.map((a) => a[j]!)), dtype));
  const out = workspace.sharedOutput(N * K); // one candidate [N, K] at a time
  rowsScaledInto(all, 0, w, K, 0, N);
  for (let j = 0; j < set.length; j++) {
    const c = { ...set[j]!, amax: amaxes[j]!, off: 0 };
    await Promise.all(bands.map(([n0, n1]) => pool.run({ ...base, phase: 'build', n0, n1, candidates: [c], out } satisfies AwqBandTask)));
    all.set(out, (j + 1) * N * K);
  }
}
