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
import type { GemmEngine, PreparedLinear } from '../forward/gemm.js';
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

/** Bytes of the search's W^T buffer for a linear of `params` weights: the reference and one set of candidates in f32. */
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
 * the W·s pass itself), so one grow-only buffer each for the [N, K] scratch and the candidates' W^T.
 */
export class AwqWorkspace {
  private scratchBuf = new Float32Array(0);
  private candidatesBuf = new Float32Array(0);
  scratch(n: number): Float32Array {
    if (this.scratchBuf.length < n) this.scratchBuf = new Float32Array(n);
    return this.scratchBuf.subarray(0, n);
  }
  candidates(n: number): Float32Array {
    if (this.candidatesBuf.length < n) this.candidatesBuf = new Float32Array(n);
    return this.candidatesBuf.subarray(0, n);
  }
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
  /** Where the time went: building the candidates (fake quantization, transposes, engine setup), running their GEMMs and losses. */
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
 * ceil(T/64)-th). Returns the chosen ratio per block, [N, K/G] (ones for a linear that saw no tokens).
 */
export async function awqClipBlockSearch(
  lin: AwqLinear,
  fmt: Pick<QuantFormat, 'fakeQuantizeInPlace' | 'groupSize' | 'name'>,
  s: Float32Array,
  batches: () => AsyncIterable<AwqBatch>,
): Promise<Float32Array> {
  const { w, N, K, dtype } = lin;
  const G = fmt.groupSize!;
  const fq = fmt.fakeQuantizeInPlace!;
  const ng = K / G;
  const sw = s.map((v) => roundToDType(v, dtype));
  const p = s.map((v) => roundToDType(Math.fround(1 / v), dtype));
  const ws = new Float32Array(N * K);
  for (let n = 0; n < N; n++) for (let k = 0; k < K; k++) ws[n * K + k] = roundToDType(Math.fround(w[n * K + k]! * sw[k]!), dtype);
  // each ratio's error W_q(r) − W', kept for the whole search (11 x [N, K]; the search is for small layers)
  const diffs = AWQ_CLIP_RATIOS.map((r) => {
    const q = fq(ws.slice(), N, K, 0, r);
    for (let i = 0; i < q.length; i++) q[i] = q[i]! - ws[i]!;
    return q;
  });
  const err = AWQ_CLIP_RATIOS.map(() => new Float64Array(N * ng));
  let seen = false;
  for await (const { x, T } of batches()) {
    if (T === 0) continue;
    seen = true;
    const stride = Math.ceil(T / AWQ_CLIP_TOKENS);
    const ts = Array.from({ length: Math.ceil(T / stride) }, (_, i) => i * stride);
    const xs = new Float32Array(ts.length * K);
    ts.forEach((t, i) => {
      for (let k = 0; k < K; k++) xs[i * K + k] = Math.fround(x[t * K + k]! * p[k]!);
    });
    diffs.forEach((d, r) => {
      const e = err[r]!;
      for (let n = 0; n < N; n++)
        for (let g = 0; g < ng; g++) {
          let sum = 0;
          for (let i = 0; i < ts.length; i++) {
            let dot = 0;
            for (let k = g * G; k < (g + 1) * G; k++) dot += xs[i * K + k]! * d[n * K + k]!;
            sum += dot * dot;
          }
          e[n * ng + g] = e[n * ng + g]! + sum / ts.length;
        }
    });
  }
  const ratios = new Float32Array(N * ng).fill(1);
  if (!seen) return ratios;
  for (let b = 0; b < N * ng; b++) {
    let best = 0;
    for (let r = 1; r < err.length; r++) if (err[r]![b]! < err[best]![b]!) best = r;
    ratios[b] = AWQ_CLIP_RATIOS[best]!;
  }
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
  const { w, N, K, dtype } = lin;
  const fqInPlace = fmt.fakeQuantizeInPlace!;
  const loss = new Float64Array(candidates.length);
  const seconds = { candidates: 0, gemm: 0 };
  const perSet = candidatesPerSet(N * K, budgetBytes);
  const scratch = workspace.scratch(CANDIDATE_ROWS * K);
  for (let a0 = 0; a0 < candidates.length; a0 += perSet) {
    const set = candidates.slice(a0, a0 + perSet);
    let t0 = performance.now();
    const members = [(wt: Float32Array, Nt: number, off: number) => transposeScaled(wt, Nt, off, w, N, K)];
    for (const c of set) members.push((wt, Nt, off) => candidateInto(wt, Nt, off, w, N, K, c.s, fqInPlace, dtype, scratch, c.clip));
    const prepared = await prepareSideBySide(members, N, K, gemm, workspace);
    seconds.candidates += (performance.now() - t0) / 1000;
    t0 = performance.now();
    try {
      const Nt = (set.length + 1) * N;
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
 * The candidate fq(dtype(W · diag(dtype(s)))) · diag(dtype(1/s)), written transposed into columns
 * [off, off + N) of wt [K, Nt], so that x · C^T = (x · p) · fq(W s)^T. `scratch`: a [64, K] buffer.
 */
function candidateInto(
  wt: Float32Array, Nt: number, off: number, w: Float32Array, N: number, K: number, s: Float32Array,
  fqInPlace: (w: Float32Array, N: number, K: number, amax: number, clip?: number) => Float32Array, dtype: FloatDType, scratch: Float32Array, clip = 1,
): void {
  const sw = s.map((v) => roundToDType(v, dtype));
  const p = s.map((v) => roundToDType(Math.fround(1 / v), dtype));
  // max |dtype(W s)| = dtype(max |W s|): rounding is monotonic
  let amax = 0;
  for (let n = 0; n < N; n++) {
    const r = n * K;
    for (let k = 0; k < K; k++) {
      const a = Math.abs(w[r + k]! * sw[k]!);
      if (a > amax) amax = a;
    }
  }
  amax = roundToDType(Math.fround(amax), dtype);
  // 64 rows at a time, in a scratch that stays in cache: W s, rounded, fake-quantized, written transposed times p
  for (let n0 = 0; n0 < N; n0 += CANDIDATE_ROWS) {
    const rows = Math.min(CANDIDATE_ROWS, N - n0);
    const block = scratch.subarray(0, rows * K);
    for (let r = 0; r < rows; r++) {
      const o = (n0 + r) * K;
      for (let k = 0; k < K; k++) block[r * K + k] = w[o + k]! * sw[k]!; // the store rounds to f32
    }
    roundArrayToDType(block, dtype);
    fqInPlace(block, rows, K, amax, clip);
    for (let k = 0; k < K; k++) {
      const base = k * Nt + off + n0;
      const pk = p[k]!;
      for (let r = 0; r < rows; r++) wt[base + r] = block[r * K + k]! * pk;
    }
  }
}

/** Rows of a candidate made at once (a [64, K] block: 1 MiB at K = 4096). */
const CANDIDATE_ROWS = 64;

/** Rounds f32 values (finite) to the dtype in place; bf16 by round-to-nearest-even on the bits. */
function roundArrayToDType(a: Float32Array, dtype: FloatDType): void {
  if (dtype === 'F32') return;
  if (dtype === 'BF16') {
    const u = new Uint32Array(a.buffer, a.byteOffset, a.length);
    for (let i = 0; i < u.length; i++) {
      const b = u[i]!;
      u[i] = (b + 0x7fff + ((b >>> 16) & 1)) & 0xffff0000;
    }
    return;
  }
  for (let i = 0; i < a.length; i++) a[i] = roundToDType(a[i]!, dtype);
}

/** Writes m [N, K] (times p[k] per column, when given) transposed into columns [off, off + N) of wt [K, Nt], 64 rows at a time. */
function transposeScaled(wt: Float32Array, Nt: number, off: number, m: Float32Array, N: number, K: number, p?: Float32Array): void {
  for (let n0 = 0; n0 < N; n0 += 64) {
    const n1 = Math.min(N, n0 + 64);
    for (let k = 0; k < K; k++) {
      const base = k * Nt + off;
      const pk = p ? p[k]! : 1;
      for (let n = n0; n < n1; n++) wt[base + n] = m[n * K + k]! * pk;
    }
  }
}

/**
 * One linear of the members' rows stacked along N ([m·N, K]), prepared on the engine as W^T: each
 * member writes its [N, K] transposed into its columns of the [K, m·N] buffer.
 */
async function prepareSideBySide(members: ((wt: Float32Array, Nt: number, off: number) => void)[], N: number, K: number, gemm: GemmEngine, workspace: AwqWorkspace): Promise<PreparedLinear> {
  const Nt = members.length * N;
  const wt = workspace.candidates(K * Nt); // [K, Nt]
  members.forEach((write, j) => write(wt, Nt, j * N));
  if (gemm.prepareTransposed) return gemm.prepareTransposed({ wt, N: Nt, K });
  const all = new Float32Array(Nt * K); // engines that take W [Nt, K]
  for (let k = 0; k < K; k++) for (let n = 0; n < Nt; n++) all[n * K + k] = wt[k * Nt + n]!;
  return gemm.prepare({ w: all, N: Nt, K });
}
