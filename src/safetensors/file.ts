import { constants } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { basename } from 'node:path';
import { SafetensorsFormatError } from '../errors.js';
import { numelOf, type DType } from './dtypes.js';
import { parseHeader, parseHeaderLength, type ParsedHeader } from './header.js';
import { decodeToFloat32 } from '../codecs/float.js';
import { PAGE } from './aligned-file.js';

/**
 * A lazy reference to one tensor inside a safetensors file. Nothing is read until asked; every
 * read is a positioned read into a buffer the caller may supply and reuse.
 */
export class TensorRef {
  constructor(
    readonly file: SafetensorsFile,
    readonly name: string,
    readonly dtype: DType,
    readonly shape: readonly number[],
    /** Absolute offset of the first byte in the file. */
    readonly offset: number,
    readonly byteLength: number,
  ) {}

  get numel(): number {
    return numelOf(this.shape);
  }

  /** The file it is stored in (a tensor source's `origin`). */
  get origin(): string {
    return this.file.path;
  }

  /** Bytes of one row (one index of the first dimension). A 0-d tensor has one row. */
  get rowBytes(): number {
    const rows = this.shape.length === 0 ? 1 : this.shape[0]!;
    return rows === 0 ? 0 : this.byteLength / rows;
  }

  get rows(): number {
    return this.shape.length === 0 ? 1 : this.shape[0]!;
  }

  /** Reads the whole tensor. `into` (if given) must hold at least byteLength bytes; a view of it is returned. */
  read(into?: Uint8Array): Promise<Uint8Array> {
    return this.readBytes(0, this.byteLength, into);
  }

  /** Reads rows [start, end) of the first dimension. */
  readRows(start: number, end: number, into?: Uint8Array): Promise<Uint8Array> {
    if (!(Number.isInteger(start) && Number.isInteger(end) && 0 <= start && start <= end && end <= this.rows)) {
      throw new RangeError(`${this.name}: row range [${start}, ${end}) outside [0, ${this.rows})`);
    }
    return this.readBytes(start * this.rowBytes, end * this.rowBytes, into);
  }

  /** Reads bytes [start, end) of the tensor's data. */
  readBytes(start: number, end: number, into?: Uint8Array): Promise<Uint8Array> {
    this.checkRange(start, end);
    const n = end - start;
    const dest = into ? into.subarray(0, n) : new Uint8Array(n);
    if (dest.length < n) throw new RangeError(`${this.name}: buffer of ${into!.length} bytes is smaller than ${n}`);
    return this.file.readAt(this.offset + start, dest, this.name).then(() => dest);
  }

  /**
   * Reads bytes [start, end) bypassing the page cache (O_DIRECT) into `aligned`, page-aligned memory
   * (a WebAssembly.Memory view) of at least `directReadSpan(end - start)` bytes, and returns the view
   * of the wanted bytes inside it. For data read once (tensors copied through unchanged): the page
   * cache costs this kind of machine about 1 s of CPU per GB read (spec/node-performance.md), and
   * O_DIRECT none. Where O_DIRECT is refused, a normal read.
   */
  readBytesDirect(start: number, end: number, aligned: Uint8Array): Promise<Uint8Array> {
    this.checkRange(start, end);
    if (aligned.length < directReadSpan(end - start)) throw new RangeError(`${this.name}: buffer of ${aligned.length} bytes is smaller than ${directReadSpan(end - start)}`);
    return this.file.readAtDirect(this.offset + start, end - start, aligned, this.name);
  }

  private checkRange(start: number, end: number): void {
    if (!(0 <= start && start <= end && end <= this.byteLength)) {
      throw new RangeError(`${this.name}: byte range [${start}, ${end}) outside [0, ${this.byteLength})`);
    }
  }

  /** Reads and decodes a float tensor (F32/BF16/F16) to a new Float32Array. For small tensors and tests. */
  async toFloat32(): Promise<Float32Array> {
    return decodeToFloat32(await this.read(), this.dtype, this.name);
  }
}

/** Bytes a buffer needs for readBytesDirect of n bytes (whole pages around them). */
export function directReadSpan(n: number): number {
  return Math.ceil(n / PAGE) * PAGE + 2 * PAGE;
}

/** An open safetensors file with a validated header. Call `close()` when done. */
export class SafetensorsFile {
  private handle: FileHandle | undefined;
  private closed = false;
  /** O_DIRECT handle, opened on first use; null where the file system refuses O_DIRECT. */
  private direct: Promise<FileHandle | null> | undefined;
  readonly tensors: Map<string, TensorRef>;

  private constructor(
    readonly path: string,
    readonly size: number,
    readonly header: ParsedHeader,
    handle: FileHandle,
  ) {
    this.handle = handle;
    this.tensors = new Map();
    for (const t of header.tensors) {
      this.tensors.set(
        t.name,
        new TensorRef(this, t.name, t.dtype, t.shape, header.dataStart + t.dataOffsets[0], t.dataOffsets[1] - t.dataOffsets[0]),
      );
    }
  }

  /** Opens a file and validates its header; reads only the header bytes. */
  static async open(path: string): Promise<SafetensorsFile> {
    let handle: FileHandle;
    try {
      handle = await open(path, 'r');
    } catch (e) {
      throw new SafetensorsFormatError(path, `cannot open: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
    try {
      const st = await handle.stat();
      if (!st.isFile()) throw new SafetensorsFormatError(path, 'not a file');
      const size = st.size;
      const prefix = new Uint8Array(8);
      if (size >= 8) await readFully(handle, prefix, 0, path);
      const headerLength = parseHeaderLength(prefix, size, path);
      const json = new Uint8Array(headerLength);
      await readFully(handle, json, 8, path);
      const header = parseHeader(json, headerLength, size, path);
      return new SafetensorsFile(path, size, header, handle);
    } catch (e) {
      await handle.close();
      throw e;
    }
  }

  get metadata(): Record<string, string> | undefined {
    return this.header.metadata;
  }

  get name(): string {
    return basename(this.path);
  }

  tensor(name: string): TensorRef {
    const t = this.tensors.get(name);
    if (!t) throw new SafetensorsFormatError(this.path, 'no such tensor', name);
    return t;
  }

  /** Positioned read of dest.length bytes at an absolute file offset. */
  async readAt(position: number, dest: Uint8Array, what: string): Promise<void> {
    // once closed, never reopened: a read still in flight when a failed run closed its files
    // would otherwise open a handle nobody closes
    if (this.closed) throw new SafetensorsFormatError(this.path, 'read after the file was closed', what);
    if (!this.handle) this.handle = await open(this.path, 'r');
    await readFully(this.handle, dest, position, this.path, what);
  }

  /** Reads `length` bytes at `position` with O_DIRECT into page-aligned `aligned`; returns their view. */
  async readAtDirect(position: number, length: number, aligned: Uint8Array, what: string): Promise<Uint8Array> {
    if (this.closed) throw new SafetensorsFormatError(this.path, 'read after the file was closed', what);
    this.direct ??= constants.O_DIRECT === undefined ? Promise.resolve(null) : open(this.path, constants.O_RDONLY | constants.O_DIRECT).catch(() => null);
    const h = await this.direct;
    const a = Math.floor(position / PAGE) * PAGE;
    const span = Math.ceil((position + length) / PAGE) * PAGE - a;
    if (h && length > 0) {
      try {
        let done = 0;
        while (done < span) {
          const { bytesRead } = await h.read(aligned, done, span - done, a + done);
          if (bytesRead === 0) break; // the end of the file, inside the last page
          done += bytesRead;
        }
        if (done >= position + length - a) return aligned.subarray(position - a, position - a + length);
      } catch {
        // EINVAL (memory or offset alignment this file system wants larger): read normally below
      }
    }
    const dest = aligned.subarray(0, length);
    await this.readAt(position, dest, what);
    return dest;
  }

  async close(): Promise<void> {
    this.closed = true;
    const h = this.handle;
    this.handle = undefined;
    await h?.close();
    const d = this.direct;
    this.direct = undefined;
    await (await d)?.close();
  }
}

async function readFully(h: FileHandle, dest: Uint8Array, position: number, path: string, what?: string): Promise<void> {
  let done = 0;
  while (done < dest.length) {
    const { bytesRead } = await h.read(dest, done, dest.length - done, position + done);
    if (bytesRead === 0) {
      throw new SafetensorsFormatError(path, `unexpected end of file at byte ${position + done} (file truncated while reading?)`, what);
    }
    done += bytesRead;
  }
}
