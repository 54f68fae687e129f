/**
 * Views: tensor sources computed from other sources, never copying a whole tensor.
 *
 *   expertSlice(t, e)          t [E, ...rest]  -> t[e]            [...rest]       (one expert of a 3-D tensor)
 *   rowRange(t, r0, r1)        t [R, ...rest]  -> t[r0:r1]        [r1-r0, ...rest] (a member of a fused tensor)
 *   transposed(t)              t [A, B]        -> t^T             [B, A]          (`[E, in, out]` experts read as [out, in])
 *   fp8BlockDequant(q, s)      q F8_E4M3 [N, K], s F32 [ceil(N/128), ceil(K/128)] -> BF16 [N, K]
 *
 * The first two are byte ranges of their base, so O_DIRECT reads pass through to the file. The
 * other two compute their rows from reads of the base, a bounded block at a time.
 */
import { CheckpointError } from '../errors.js';
import { checkedProduct, dtypeSize, type DType } from '../safetensors/dtypes.js';
import type { TensorRef } from '../safetensors/file.js';
import { decodeToFloat32, f32ToBf16 } from '../codecs/float.js';
import { E4M3_VALUES } from '../codecs/e4m3.js';
import { checkByteRange, checkRowRange, destination, type TensorSource } from './source.js';

// A safetensors tensor is a source as it is.
const _tensorRefIsASource = (t: TensorRef): TensorSource => t;
void _tensorRefIsASource;

/** Product of a shape's extents, refusing anything past 2^53 (where doubles stop counting exactly). */
export function checkedNumel(shape: readonly number[], what: string): number {
  try {
    return checkedProduct(shape);
  } catch (e) {
    throw new RangeError(`${what}: shape [${shape.join(', ')}]: ${(e as Error).message}`);
  }
}

/**
 * Shared bookkeeping of a computed source: sizes from dtype and shape, whole-tensor and byte-range
 * reads via readRows (a subclass may read byte ranges its own way), reads without the page cache
 * falling back to plain reads, f32 decoding.
 */
export abstract class View implements TensorSource {
  readonly numel: number;
  readonly byteLength: number;
  readonly rows: number;
  readonly rowBytes: number;

  constructor(
    readonly name: string,
    readonly dtype: DType,
    readonly shape: readonly number[],
    readonly origin: string,
  ) {
    this.numel = checkedNumel(shape, name);
    this.byteLength = this.numel * dtypeSize(dtype);
    if (!Number.isSafeInteger(this.byteLength)) throw new RangeError(`${name}: more than 2^53 bytes`);
    this.rows = shape.length === 0 ? 1 : shape[0]!;
    this.rowBytes = this.rows === 0 ? 0 : this.byteLength / this.rows;
  }

  abstract readRows(start: number, end: number, into?: Uint8Array): Promise<Uint8Array>;

  read(into?: Uint8Array): Promise<Uint8Array> {
    return this.readBytes(0, this.byteLength, into);
  }

  /** Any byte range: the rows that hold it are read, then the range is cut out of them. */
  async readBytes(start: number, end: number, into?: Uint8Array): Promise<Uint8Array> {
    checkByteRange(this, start, end);
    const dest = destination(this.name, end - start, into);
    if (end === start) return dest;
    const r0 = Math.floor(start / this.rowBytes);
    const r1 = Math.ceil(end / this.rowBytes);
    if (r0 * this.rowBytes === start && r1 * this.rowBytes === end) return this.readRows(r0, r1, dest);
    const rows = await this.readRows(r0, r1);
    dest.set(rows.subarray(start - r0 * this.rowBytes, end - r0 * this.rowBytes));
    return dest;
  }

  async readBytesDirect(start: number, end: number, aligned: Uint8Array): Promise<Uint8Array> {
    return this.readBytes(start, end, aligned);
  }

  async toFloat32(): Promise<Float32Array> {
    return decodeToFloat32(await this.read(), this.dtype, this.name);
  }
}

/** A contiguous byte range of a base source, with its own name and shape. */
class RangeView extends View {
  constructor(
    private readonly base: TensorSource,
    private readonly offset: number,
    name: string,
    shape: readonly number[],
    origin: string,
  ) {
    super(name, base.dtype, shape, origin);
  }

  async readRows(start: number, end: number, into?: Uint8Array): Promise<Uint8Array> {
    checkRowRange(this, start, end);
    return this.base.readBytes(this.offset + start * this.rowBytes, this.offset + end * this.rowBytes, into);
  }

  override async readBytes(start: number, end: number, into?: Uint8Array): Promise<Uint8Array> {
    checkByteRange(this, start, end);
    return this.base.readBytes(this.offset + start, this.offset + end, into);
  }

  override async readBytesDirect(start: number, end: number, aligned: Uint8Array): Promise<Uint8Array> {
    checkByteRange(this, start, end);
    return this.base.readBytesDirect(this.offset + start, this.offset + end, aligned);
  }
}

/** `t[e]` of a tensor of at least 2 dimensions, named `name` (e.g. `...experts.3.gate_up_proj`). */
export function expertSlice(t: TensorSource, e: number, name = `${t.name}[${e}]`): TensorSource {
  if (t.shape.length < 2) throw new RangeError(`${t.name}: an expert slice needs at least 2 dimensions, shape is [${t.shape.join(', ')}]`);
  checkRowRange(t, e, e + 1);
  return new RangeView(t, e * t.rowBytes, name, t.shape.slice(1), `${t.origin} (${t.name}[${e}])`);
}

/** Rows [r0, r1) of a tensor (e.g. the q rows of a fused qkv weight). */
export function rowRange(t: TensorSource, r0: number, r1: number, name = `${t.name}[${r0}:${r1}]`): TensorSource {
  if (t.shape.length < 1) throw new RangeError(`${t.name}: a row range needs at least 1 dimension`);
  checkRowRange(t, r0, r1);
  return new RangeView(t, r0 * t.rowBytes, name, [r1 - r0, ...t.shape.slice(1)], `${t.origin} (${t.name}[${r0}:${r1}])`);
}

/** The same bytes under another shape of the same element count (e.g. [E, A, B] read as [E*A, B] rows). */
export function reshaped(t: TensorSource, shape: readonly number[], name = t.name): TensorSource {
  if (checkedNumel(shape, name) !== t.numel) throw new RangeError(`${t.name}: cannot view [${t.shape.join(', ')}] as [${shape.join(', ')}]`);
  return new RangeView(t, 0, name, shape, t.origin);
}

/** Bytes of base rows one block of a computed view reads at once. */
const BLOCK_BYTES = 4 * 2 ** 20;

/** `t^T` of a 2-D tensor: row j of the view is column j of the base. */
class TransposeView extends View {
  private readonly A: number;
  private readonly B: number;

  constructor(
    private readonly base: TensorSource,
    name: string,
  ) {
    if (base.shape.length !== 2) throw new RangeError(`${base.name}: a transposed view needs 2 dimensions, shape is [${base.shape.join(', ')}]`);
    super(name, base.dtype, [base.shape[1]!, base.shape[0]!], `${base.origin} (${base.name} transposed)`);
    this.A = base.shape[0]!;
    this.B = base.shape[1]!;
  }

  /**
   * Rows [start, end) of the view are columns [start, end) of the base: the base is read in blocks
   * of whole rows (≤ 4 MiB) and each block's columns are scattered into place. Reading a whole
   * view chunk by chunk thus reads the base once per chunk; an expert slice is small enough for
   * that to come from the page cache.
   */
  async readRows(start: number, end: number, into?: Uint8Array): Promise<Uint8Array> {
    checkRowRange(this, start, end);
    const el = dtypeSize(this.dtype);
    const { A, B } = this;
    const n = end - start;
    const dest = destination(this.name, n * A * el, into);
    if (n === 0 || A === 0) return dest;
    const blockRows = Math.max(1, Math.min(A, Math.floor(BLOCK_BYTES / (B * el))));
    const block = new Uint8Array(blockRows * B * el);
    for (let i0 = 0; i0 < A; i0 += blockRows) {
      const i1 = Math.min(A, i0 + blockRows);
      const got = await this.base.readRows(i0, i1, block);
      for (let i = i0; i < i1; i++) {
        const srcRow = (i - i0) * B * el;
        for (let j = start; j < end; j++) {
          const s = srcRow + j * el;
          const d = ((j - start) * A + i) * el;
          for (let b = 0; b < el; b++) dest[d + b] = got[s + b]!;
        }
      }
    }
    return dest;
  }
}

export function transposed(t: TensorSource, name = `${t.name}^T`): TensorSource {
  return new TransposeView(t, name);
}

/** DeepSeek's FP8 block size: one f32 `weight_scale_inv` per 128x128 tile. */
export const FP8_SOURCE_BLOCK = 128;

/**
 * An FP8 e4m3 weight with 128x128 block scales (DeepSeek V3/R1's published layout) read as BF16:
 *   W[r, c] = bf16_RNE( f32( e4m3(q[r, c]) * scale_inv[r / 128, c / 128] ) )
 * one IEEE f32 multiply, then round-to-nearest-even to bf16 (the scale is not rounded first), as
 * DeepSeek's `weight_dequant` writes its BF16 copy (spec families.md §6.2). Edge tiles are ragged:
 * the scale of a partial tile covers only the rows/columns that exist.
 */
class Fp8BlockDequantView extends View {
  private readonly K: number;
  private readonly BK: number;
  private readonly tables = new Map<number, Uint16Array>();

  constructor(
    readonly q: TensorSource,
    readonly scaleInv: TensorSource,
    name: string,
  ) {
    if (q.dtype !== 'F8_E4M3' || q.shape.length !== 2) {
      throw new CheckpointError(q.origin, `tensor "${q.name}" is ${q.dtype} [${q.shape.join(', ')}]; an FP8-block weight is F8_E4M3 [N, K]`);
    }
    const [N, K] = q.shape as [number, number];
    const want = [Math.ceil(N / FP8_SOURCE_BLOCK), Math.ceil(K / FP8_SOURCE_BLOCK)];
    if (scaleInv.dtype !== 'F32' || scaleInv.shape.length !== 2 || scaleInv.shape[0] !== want[0] || scaleInv.shape[1] !== want[1]) {
      throw new CheckpointError(
        scaleInv.origin,
        `tensor "${scaleInv.name}" is ${scaleInv.dtype} [${scaleInv.shape.join(', ')}]; the 128x128 block scales of "${q.name}" [${N}, ${K}] must be F32 [${want.join(', ')}]`,
      );
    }
    super(name, 'BF16', [N, K], `${q.origin} (${q.name} with ${scaleInv.name})`);
    this.K = K;
    this.BK = want[1]!;
  }

  async readRows(start: number, end: number, into?: Uint8Array): Promise<Uint8Array> {
    checkRowRange(this, start, end);
    const { K, BK } = this;
    const dest = destination(this.name, (end - start) * K * 2, into);
    if (end === start || K === 0) return dest;
    const out = new Uint16Array(dest.buffer, dest.byteOffset, dest.byteLength >> 1);
    if (dest.byteOffset % 2 !== 0) throw new RangeError(`${this.name}: destination must be 2-byte aligned`);
    const t0 = Math.floor(start / FP8_SOURCE_BLOCK);
    const t1 = Math.ceil(end / FP8_SOURCE_BLOCK);
    const scales = decodeToFloat32(await this.scaleInv.readRows(t0, t1), 'F32', this.scaleInv.name);
    const rowsPerBlock = Math.max(1, Math.floor(BLOCK_BYTES / K));
    const codes = new Uint8Array(Math.min(rowsPerBlock, end - start) * K);
    // each tile's 256 possible results, built once per tile scale: the inner loop is a table lookup
    const tables = Array.from(scales, (s) => this.tableFor(s));
    for (let r0 = start; r0 < end; r0 += rowsPerBlock) {
      const r1 = Math.min(end, r0 + rowsPerBlock);
      const q = await this.q.readRows(r0, r1, codes);
      for (let r = r0; r < r1; r++) {
        const srow = (Math.floor(r / FP8_SOURCE_BLOCK) - t0) * BK;
        const qo = (r - r0) * K;
        const oo = (r - start) * K;
        for (let tc = 0; tc < BK; tc++) {
          const tbl = tables[srow + tc]!;
          const c1 = Math.min(K, (tc + 1) * FP8_SOURCE_BLOCK);
          for (let c = tc * FP8_SOURCE_BLOCK; c < c1; c++) out[oo + c] = tbl[q[qo + c]!]!;
        }
      }
    }
    return dest;
  }

  /** bf16 bits of bf16_RNE(f32(e4m3(code) * s)) for every code byte; the last few scales' tables are kept. */
  private tableFor(s: number): Uint16Array {
    let t = this.tables.get(s);
    if (!t) {
      t = new Uint16Array(256);
      for (let code = 0; code < 256; code++) t[code] = f32ToBf16(Math.fround(E4M3_VALUES[code]! * s));
      if (this.tables.size >= 4096) this.tables.clear();
      this.tables.set(s, t);
    }
    return t;
  }
}

export function fp8BlockDequant(q: TensorSource, scaleInv: TensorSource, name = q.name): TensorSource {
  return new Fp8BlockDequantView(q, scaleInv, name);
}

/**
 * The FP8 codes and 128x128 scales behind an fp8BlockDequant view, for readers that expand them
 * elsewhere (the kernel workers, so the expansion does not run on the main thread); else undefined.
 */
export function fp8BlockParts(t: TensorSource): { q: TensorSource; scaleInv: TensorSource } | undefined {
  return t instanceof Fp8BlockDequantView ? { q: t.q, scaleInv: t.scaleInv } : undefined;
}

/** Rows of a base gathered from runs [start, count) in order (a fused tensor's member made of several blocks). */
class RowRunsView extends View {
  constructor(
    private readonly base: TensorSource,
    private readonly runs: readonly (readonly [number, number])[],
    name: string,
  ) {
    super(name, base.dtype, [runs.reduce((a, r) => a + r[1], 0), ...base.shape.slice(1)], `${base.origin} (${base.name}, rows of ${name})`);
  }

  async readRows(start: number, end: number, into?: Uint8Array): Promise<Uint8Array> {
    checkRowRange(this, start, end);
    const dest = destination(this.name, (end - start) * this.rowBytes, into);
    let row = 0; // this view's first row of the current run
    for (const [s, n] of this.runs) {
      const a = Math.max(start, row), b = Math.min(end, row + n);
      if (a < b) await this.base.readRows(s + a - row, s + b - row, dest.subarray((a - start) * this.rowBytes, (b - start) * this.rowBytes));
      row += n;
      if (row >= end) break;
    }
    return dest;
  }
}

/** The rows of `t` named by `runs` ([first row, count] each), in that order, as one tensor `name`. */
export function rowRuns(t: TensorSource, runs: readonly (readonly [number, number])[], name: string): TensorSource {
  if (t.shape.length < 1) throw new RangeError(`${t.name}: row runs need at least 1 dimension`);
  for (const [s, n] of runs) checkRowRange(t, s, s + n);
  return new RowRunsView(t, runs, name);
}
