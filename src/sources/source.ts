/**
 * Tensor sources: everything rxquant reads weights through. A source has a name, a dtype and a
 * shape, and reads rows or byte ranges of its row-major data into a buffer the caller owns. A
 * safetensors tensor (`TensorRef`) is one; the views in views.ts are others (one expert of a 3-D
 * tensor, a transpose, a row range of a fused tensor, an FP8 tensor dequantized with its block
 * scales), and they compose. The planner, the kernels and the writer's copy path take any source,
 * so a new checkpoint layout is a new view, not a change to them.
 */
import type { DType } from '../safetensors/dtypes.js';

export interface TensorSource {
  readonly name: string;
  readonly dtype: DType;
  readonly shape: readonly number[];
  /** Bytes of the whole tensor, row-major. */
  readonly byteLength: number;
  /** Extent of the first dimension (1 for a 0-d tensor). */
  readonly rows: number;
  /** Bytes of one row (one index of the first dimension). */
  readonly rowBytes: number;
  readonly numel: number;
  /** Where the bytes come from, for messages: the file, and for a view what it views. */
  readonly origin: string;
  /** Reads the whole tensor into `into` (if given, at least byteLength bytes); returns the view of it. */
  read(into?: Uint8Array): Promise<Uint8Array>;
  /** Reads rows [start, end) of the first dimension. */
  readRows(start: number, end: number, into?: Uint8Array): Promise<Uint8Array>;
  /** Reads bytes [start, end) of the row-major data. */
  readBytes(start: number, end: number, into?: Uint8Array): Promise<Uint8Array>;
  /**
   * Reads bytes [start, end) into page-aligned memory of at least `directReadSpan(end - start)`
   * bytes, bypassing the page cache where the bytes are one range of one file (O_DIRECT); returns
   * the view of the wanted bytes inside `aligned`. Views that compute their bytes read normally.
   */
  readBytesDirect(start: number, end: number, aligned: Uint8Array): Promise<Uint8Array>;
  /** Reads and decodes a float tensor to f32 (small tensors and tests). */
  toFloat32(): Promise<Float32Array>;
}

/** Checks a row range against a source; the message names the tensor. */
export function checkRowRange(t: Pick<TensorSource, 'name' | 'rows'>, start: number, end: number): void {
  if (!(Number.isInteger(start) && Number.isInteger(end) && 0 <= start && start <= end && end <= t.rows)) {
    throw new RangeError(`${t.name}: row range [${start}, ${end}) outside [0, ${t.rows})`);
  }
}

/** Checks a byte range against a source. */
export function checkByteRange(t: Pick<TensorSource, 'name' | 'byteLength'>, start: number, end: number): void {
  if (!(Number.isInteger(start) && Number.isInteger(end) && 0 <= start && start <= end && end <= t.byteLength)) {
    throw new RangeError(`${t.name}: byte range [${start}, ${end}) outside [0, ${t.byteLength})`);
  }
}

/** The destination of a read of n bytes: a view of `into`, or a new buffer. */
export function destination(name: string, n: number, into?: Uint8Array): Uint8Array {
  if (!into) return new Uint8Array(n);
  if (into.length < n) throw new RangeError(`${name}: buffer of ${into.length} bytes is smaller than ${n}`);
  return into.subarray(0, n);
}
