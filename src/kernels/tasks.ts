/**
 * The heavy per-chunk kernels, as plain functions over typed arrays. A task names a row range of one
 * weight (raw bytes in its source dtype), the AWQ edits to apply, and where to put the results; it
 * runs in a Piscina worker (worker.ts) or inline, with identical results. Inputs and outputs live in
 * SharedArrayBuffer slots, so nothing is copied between threads.
 */
import { decodeToFloat32 } from '../codecs/float.js';
import { fp8LutForBf16, fp8LutForF16, quantizeFp8, quantizeFp8Lut16 } from '../formats/fp8.js';
import { fp8BlockScales, quantizeFp8Block } from '../formats/fp8-block.js';
import { nvfp4TablesForBf16, nvfp4TablesForF16, quantizeNvfp4 } from '../formats/nvfp4.js';
import { packNibblesK } from '../codecs/e2m1.js';
import { packInt4Rows } from '../codecs/int4.js';
import { int4Scales, int4ScalesClipped, quantizeInt4 } from '../formats/int4.js';
import type { FloatDType } from '../safetensors/dtypes.js';
import { applyWeightOps, type WeightOp } from './weight-ops.js';
import { firstNonFinite } from '../formats/common.js';
import type { WasmKernels } from './wasm.js';
import { bf16ToF32, f32FromBits, f16ToF32, f32ToBf16 } from '../codecs/float.js';
import { E4M3_VALUES } from '../codecs/e4m3.js';

export interface ChunkInput {
  /** Raw little-endian bytes of rows [row0, row0 + rows) in `dtype`. */
  src: Uint8Array;
  /** All views (src, codes, scales, lut) lie in the kernels' shared WebAssembly memory: byteOffset is the address. */
  wasm?: boolean;
  /** Scratch in the same memory, at least 64 KiB: the FP8 and NVFP4 tables, the AWQ edits' vectors. */
  lut?: Uint8Array;
  dtype: FloatDType;
  row0: number;
  rows: number;
  K: number;
  ops: WeightOp[];
  /**
   * `src` holds FP8 e4m3 codes (rows * K bytes at its start) of an FP8-block source, expanded here,
   * in place, to bf16(f32(e4m3) * scale) before anything else: `scales` are the 128x128 tile scales
   * of tile rows [floor(row0 / 128), ...), `BK` = ceil(K / 128) per tile row (families.md §6.2).
   */
  fp8Source?: { scales: Float32Array; BK: number };
}

export type KernelTask = ChunkInput &
  (
    /** amax and the first non-finite element, after ops */
    | { kind: 'scan' }
    /** codes = e4m3(dtype(w / scale)) */
    | { kind: 'fp8'; scale: number; codes: Uint8Array }
    /** 128x128 tile scales (rows must be whole 128-row bands, except the last) and codes */
    | { kind: 'fp8_block'; codes: Uint8Array; scales: Float32Array }
    /** e4m3 block scales under global scale ws2, and the e2m1 codes one per element (`codes`), two per byte as stored (`packed`), or both */
    | { kind: 'nvfp4'; ws2: number; scales: Uint8Array; codes?: Uint8Array; packed?: Uint8Array }
    /**
     * int4 q and f32 group scales; `packed`: the codes packed by row pairs too (rows even); `clip`:
     * AWQ-clip's ratio per (row, group) of these rows, each group's amax multiplied by it (spec §11.4)
     */
    | { kind: 'int4'; codes: Int8Array; scales: Float32Array; packed?: Uint8Array; clip?: Float32Array }
  );

export interface KernelResult {
  amax?: number;
  /** Index (within the chunk) and value of the first non-finite element. */
  nonFinite?: { index: number; value: number };
}

/** Below this many elements, building a 64K-entry table costs more than it saves. */
const LUT_MIN_ELEMENTS = 1 << 18;
/**
 * Tables by scale, the last few built (~0.2-0.4 ms each): a tensor's chunks share a scale, and at
 * a tensor boundary chunks of two or three tensors are in flight at once.
 */
class TableCache {
  private tables = new Map<number, Uint8Array>();
  constructor(private build: (scale: number) => Uint8Array, private capacity = 4) {}
  get(scale: number): Uint8Array {
    let t = this.tables.get(scale);
    if (t) this.tables.delete(scale); // re-inserted below: most recently used last
    else t = this.build(scale);
    this.tables.set(scale, t);
    if (this.tables.size > this.capacity) this.tables.delete(this.tables.keys().next().value!);
    return t;
  }
}
/** Tables over bf16 or f16 bit patterns (the table kernels read only the 16 bits of each weight). */
const fp8Tables = { BF16: new TableCache(fp8LutForBf16), F16: new TableCache(fp8LutForF16) };
const nvfp4Tables = { BF16: new TableCache(nvfp4TablesForBf16), F16: new TableCache(nvfp4TablesForF16) };
/**
 * FP8 per-tensor codes of bf16 weights come from one of two exact SIMD kernels: lut16 (a 64K-entry
 * table of fp8LutForBf16, one byte load per element, the table built once per scale) or fp8_scaled
 * (the division and both roundings in vectors). Which is faster depends on the CPU: on AMD EPYC
 * (2026-12-07) the table ran at 8.9-9.4 GB/s of bf16 per core and the arithmetic at 2.3-2.6; on an
 * Intel Xeon the table had measured 3.1 GB/s. So each thread runs its first chunks of at least
 * FP8_TRIAL_ELEMENTS by the two in turn and keeps the one with the lower best time per element,
 * after FP8_TRIALS of each (best, not total: a kernel's first calls run before V8 has optimized it,
 * and the first table of a scale is built in them). RXQUANT_FP8_KERNEL=table or =arith fixes the
 * choice (tests, benchmarks).
 */
const FP8_TRIALS = 3;
const FP8_TRIAL_ELEMENTS = 1 << 16;
const fp8Trial = { best: { table: Infinity, arith: Infinity }, runs: { table: 0, arith: 0 }, pick: undefined as 'table' | 'arith' | undefined };
function fp8Kernel(): 'table' | 'arith' {
  const forced = process.env.RXQUANT_FP8_KERNEL;
  if (forced === 'table' || forced === 'arith') return forced;
  return fp8Trial.pick ?? (fp8Trial.runs.table <= fp8Trial.runs.arith ? 'table' : 'arith');
}
function fp8Timed(method: 'table' | 'arith', elements: number, ms: number): void {
  if (fp8Trial.pick || process.env.RXQUANT_FP8_KERNEL || elements < FP8_TRIAL_ELEMENTS) return;
  fp8Trial.best[method] = Math.min(fp8Trial.best[method], ms / elements);
  fp8Trial.runs[method]++;
  if (fp8Trial.runs.table >= FP8_TRIALS && fp8Trial.runs.arith >= FP8_TRIALS) fp8Trial.pick = fp8Trial.best.arith < fp8Trial.best.table ? 'arith' : 'table';
}

/** bits & 0x7fff at or above this: NaN or infinity. */
const NON_FINITE = { BF16: 0x7f80, F16: 0x7c00 };

function weights(t: ChunkInput): Float32Array {
  const w = decodeToFloat32(t.src, t.dtype);
  if (t.ops.length > 0) applyWeightOps(w, t.K, t.row0, t.ops, t.dtype);
  return w;
}

function nonFinite(w: Float32Array): KernelResult['nonFinite'] {
  const i = firstNonFinite(w);
  return i < 0 ? undefined : { index: i, value: w[i]! };
}

/**
 * Runs a task with the SIMD kernels when they apply (a bf16 or f16 source; views in the shared
 * memory; the format's shape constraints; AWQ edits run first, in SIMD too, when their vectors fit
 * the scratch), else with the plain JavaScript kernels. Both give the same bytes; a NaN/Inf found by
 * a SIMD kernel is located by the JavaScript path.
 */
export function runKernel(task: KernelTask, k?: WasmKernels): KernelResult {
  if (task.fp8Source && task.kind === 'scan' && task.ops.length === 0 && k && task.wasm) {
    const r = scanFp8BlockWasm(task, k);
    if (r) return r;
  }
  if (task.fp8Source) {
    if (!(k && task.wasm && expandFp8BlockWasm(task, k))) expandFp8Block(task);
    task = { ...task, fp8Source: undefined };
  }
  if (k && task.wasm && (task.dtype === 'BF16' || task.dtype === 'F16')) {
    // AWQ edits first, in place: the source then holds the edited weights, exactly what the
    // JavaScript path computes before quantizing, so from here on the task has no edits left
    if (task.ops.length > 0) {
      if (!editWasm(task, k)) return runJs(task);
      task = { ...task, ops: [] };
    }
    const r = runWasm(task, k);
    if (r) return r;
  }
  return runJs(task);
}

/**
 * FP8-block codes at the start of `src` expanded in place to bf16 (`dtype` is BF16): each tile's 256
 * possible results built once per scale, then a lookup per element, walking backwards so that each
 * code is read before its two output bytes overwrite it (output index 2i >= input index i).
 */
export function expandFp8Block(task: ChunkInput): void {
  const { scales, BK } = task.fp8Source!;
  const { rows, K, row0 } = task;
  const bytes = task.src;
  const out = new Uint16Array(bytes.buffer, bytes.byteOffset, rows * K);
  const tile0 = Math.floor(row0 / 128);
  const tables = new Map<number, Uint16Array>();
  const tableFor = (s: number) => {
    let t = tables.get(s);
    if (!t) {
      t = new Uint16Array(256);
      for (let code = 0; code < 256; code++) t[code] = f32ToBf16(Math.fround(E4M3_VALUES[code]! * s));
      tables.set(s, t);
    }
    return t;
  };
  for (let r = rows - 1; r >= 0; r--) {
    const srow = (Math.floor((row0 + r) / 128) - tile0) * BK;
    const o = r * K;
    for (let tc = BK - 1; tc >= 0; tc--) {
      const tbl = tableFor(scales[srow + tc]!);
      const c0 = tc * 128;
      for (let c = Math.min(K, c0 + 128) - 1; c >= c0; c--) out[o + c] = tbl[bytes[o + c]!]!;
    }
  }
}

/**
 * The scan of an FP8-block chunk without expanding it: a dequantized element is
 * bf16(f32(e4m3) x s), whose magnitude grows with the code's (both roundings are monotonic and
 * symmetric), so each tile's largest magnitude is that of its largest code magnitude times |s|,
 * and the chunk's amax is the largest of those: the same value the scan of the expanded bf16
 * gives. Undefined (the exact path then runs and says where) for a NaN code, a non-finite result,
 * or a shape the kernel does not take.
 */
function scanFp8BlockWasm(task: KernelTask, k: WasmKernels): KernelResult | undefined {
  const { scales, BK } = task.fp8Source!;
  const phase = task.row0 % 128;
  const tiles = (((phase + task.rows - 1) >> 7) + 1) * BK;
  if (task.K % 128 !== 0 || !task.lut || task.lut.byteLength < 16 * tiles || tiles > scales.length) return undefined;
  const acc = new Uint8Array(task.lut.buffer, task.lut.byteOffset, 16 * tiles).fill(0);
  k.fp8_tile_max(task.src.byteOffset, task.rows, task.K, BK, phase, acc.byteOffset);
  let amax = 0;
  for (let t = 0; t < tiles; t++) {
    let m = 0;
    for (let j = 0; j < 16; j++) if (acc[16 * t + j]! > m) m = acc[16 * t + j]!;
    if (m === 0x7f) return undefined; // a NaN code
    const v = bf16ToF32(f32ToBf16(Math.fround(E4M3_VALUES[m]! * Math.abs(scales[t]!))));
    if (!Number.isFinite(v)) return undefined;
    if (v > amax) amax = v;
  }
  return { amax };
}

/**
 * expandFp8Block with the SIMD kernel (the same bytes), the chunk's tile scales copied into the
 * task's scratch first (the quantizing kernel fills it with its tables only afterwards). False,
 * having changed nothing, when it does not apply (a row width not a multiple of 128, no scratch).
 */
function expandFp8BlockWasm(task: KernelTask, k: WasmKernels): boolean {
  const { scales, BK } = task.fp8Source!;
  if (task.K % 128 !== 0 || !task.lut || task.lut.byteLength < scales.byteLength || task.src.byteOffset % 16 !== 0) return false;
  new Float32Array(task.lut.buffer, task.lut.byteOffset, scales.length).set(scales);
  k.fp8_block_expand(task.src.byteOffset, task.rows, task.K, task.lut.byteOffset, BK, task.row0 % 128);
  return true;
}

/**
 * The AWQ edits with the SIMD kernels, their vectors copied into the task's scratch (`lut`, used
 * by the quantizing kernel only afterwards). False, having changed nothing, when they do not apply
 * (a row width not a multiple of 8, vectors larger than the scratch).
 */
function editWasm(task: KernelTask, k: WasmKernels): boolean {
  const scratch = task.lut;
  if (!scratch || task.K % 8 !== 0 || scratch.byteOffset % 16 !== 0) return false;
  const floats = (op: WeightOp) => (op.kind === 'mulRow' ? task.rows : op.kind === 'divCol' ? task.K : 2 * task.K);
  if (task.ops.some((op) => 4 * floats(op) > scratch.length)) return false;
  const f32 = new Float32Array(scratch.buffer, scratch.byteOffset, scratch.length >> 2);
  const at = scratch.byteOffset, src = task.src.byteOffset;
  const bf16 = task.dtype === 'BF16';
  for (const op of task.ops) {
    if (op.kind === 'divCol') {
      f32.set(op.s.subarray(0, task.K));
      (bf16 ? k.ops_div_col : k.ops_div_col_f16)(src, task.rows, task.K, at);
    } else if (op.kind === 'mulRow') {
      f32.set(op.s.subarray(task.row0, task.row0 + task.rows));
      (bf16 ? k.ops_mul_row : k.ops_mul_row_f16)(src, task.rows, task.K, at);
    } else {
      f32.set(op.old.subarray(0, task.K));
      f32.set(op.new.subarray(0, task.K), task.K);
      (bf16 ? k.ops_resmooth : k.ops_resmooth_f16)(src, task.rows, task.K, at, at + 4 * task.K);
    }
  }
  return true;
}

function finiteScales(s: Float32Array): boolean {
  for (let i = 0; i < s.length; i++) if (!Number.isFinite(s[i]!)) return false;
  return true;
}

/**
 * The SIMD path for a bf16 or f16 task; undefined means "not applicable here, use JavaScript". The
 * scan and the table kernels (FP8 per-tensor, NVFP4) work on the 16 bits alone; FP8 128x128 and
 * INT4 widen to f32 (a kernel per dtype).
 */
function runWasm(task: KernelTask, k: WasmKernels): KernelResult | undefined {
  const n = task.rows * task.K;
  const src = task.src.byteOffset;
  const dtype = task.dtype as 'BF16' | 'F16';
  switch (task.kind) {
    case 'scan': {
      const m = k.amax_bf16(src, n); // max |bits|
      if (m >= NON_FINITE[dtype]) return undefined; // NaN or Inf: let the JS path say where
      return { amax: dtype === 'BF16' ? f32FromBits(m << 16) : f16ToF32(m) };
    }
    case 'fp8': {
      if (!task.lut) return undefined;
      const choice = dtype === 'BF16' && n % 16 === 0; // fp8_scaled's domain: bf16, whole vectors
      const method = choice ? fp8Kernel() : 'table';
      const t0 = performance.now();
      if (method === 'arith') {
        k.fp8_scaled(src, n, task.scale, task.codes.byteOffset);
      } else {
        task.lut.set(fp8Tables[dtype].get(task.scale));
        k.lut16(src, n, task.lut.byteOffset, task.codes.byteOffset);
      }
      if (choice) fp8Timed(method, n, performance.now() - t0);
      return {};
    }
    case 'fp8_block':
      if (task.K % 128 !== 0) return undefined;
      (dtype === 'BF16' ? k.fp8_block : k.fp8_block_f16)(src, task.rows, task.K, task.codes.byteOffset, task.scales.byteOffset);
      return finiteScales(task.scales) ? {} : undefined;
    case 'nvfp4': {
      if (!task.lut) return undefined;
      task.lut.set(nvfp4Tables[dtype].get(task.ws2));
      if (task.packed) k.nvfp4_packed(src, n / 16, task.lut.byteOffset, task.scales.byteOffset, task.packed.byteOffset);
      if (task.codes) k.nvfp4_codes(src, n / 16, task.lut.byteOffset, task.scales.byteOffset, task.codes.byteOffset);
      return {};
    }
    case 'int4':
      if (task.clip) return undefined; // clipped group scales: the JavaScript kernel
      (dtype === 'BF16' ? k.int4 : k.int4_f16)(src, n / 128, task.codes.byteOffset, task.scales.byteOffset);
      if (!finiteScales(task.scales)) return undefined;
      if (task.packed) k.pack_int4_rows(task.codes.byteOffset, task.rows, task.K, task.packed.byteOffset);
      return {};
  }
}

function runJs(task: KernelTask): KernelResult {
  switch (task.kind) {
    case 'scan': {
      const w = weights(task);
      let m = 0;
      for (let i = 0; i < w.length; i++) {
        const a = Math.abs(w[i]!);
        if (a > m) m = a;
        else if (!(a <= m)) return { nonFinite: { index: i, value: w[i]! } }; // NaN
        if (a === Infinity) return { nonFinite: { index: i, value: w[i]! } };
      }
      return { amax: m };
    }
    case 'fp8': {
      const n = task.rows * task.K;
      if ((task.dtype === 'BF16' || task.dtype === 'F16') && task.ops.length === 0 && n >= LUT_MIN_ELEMENTS) {
        const bits = new Uint16Array(task.src.buffer, task.src.byteOffset, n);
        quantizeFp8Lut16(bits, fp8Tables[task.dtype].get(task.scale), task.codes);
      } else {
        quantizeFp8(weights(task), task.scale, task.dtype, task.codes);
      }
      return {}; // the scan pass that computed the scale already checked for NaN/Inf
    }
    case 'fp8_block': {
      const w = weights(task);
      const bad = nonFinite(w);
      if (bad) return { nonFinite: bad };
      const s = fp8BlockScales(w, task.rows, task.K);
      task.scales.set(s);
      quantizeFp8Block(w, task.rows, task.K, s, task.codes);
      return {};
    }
    case 'nvfp4': {
      const n = task.rows * task.K;
      const codes = task.codes ?? new Uint8Array(n);
      quantizeNvfp4(weights(task), task.rows, task.K, task.ws2, codes, task.scales);
      if (task.packed) packNibblesK(codes.subarray(0, n), task.packed);
      return {};
    }
    case 'int4': {
      const w = weights(task);
      const bad = nonFinite(w);
      if (bad) return { nonFinite: bad };
      const s = task.clip ? int4ScalesClipped(w, task.rows, task.K, task.clip) : int4Scales(w, task.rows, task.K);
      task.scales.set(s);
      quantizeInt4(w, task.rows, task.K, s, task.codes);
      if (task.packed) packInt4Rows(task.codes.subarray(0, task.rows * task.K), task.rows, task.K, task.packed);
      return {};
    }
  }
}
