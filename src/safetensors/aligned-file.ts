/**
 * A file written in whole 4 KiB pages with O_DIRECT, from any byte ranges in any order.
 *
 * Buffered writes on this kind of machine swing between 0.4 and 4.8 GB/s as the kernel's writeback
 * comes and goes; O_DIRECT writes run at the disk's steady 2.1-2.8 GB/s and leave the page cache to
 * the input (spec/node-performance.md). O_DIRECT wants page-aligned offsets, lengths and memory, and
 * an exporter's writes are none of those (a 4-byte input_scale, a chunk of codes at an arbitrary
 * offset). So:
 *   - whole pages inside a write are copied into page-aligned staging memory (a WebAssembly.Memory,
 *     whose base is page-aligned) and written from there in the background; `write` returns once its
 *     bytes are copied, so the caller can reuse its buffer (backpressure: a bounded number of staging
 *     buffers);
 *   - the pages a write only partly covers are assembled in memory and written once complete. Only
 *     pages at tensor boundaries wait there, a few KiB per tensor.
 * Where O_DIRECT is refused (tmpfs, some network file systems) the same writes go through the page
 * cache.
 */
import { constants } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { OutputError } from '../errors.js';

export const PAGE = 4096;

export interface AlignedFileOptions {
  /** Open an existing file and keep its bytes (resume); otherwise create or truncate it. */
  existing?: boolean;
  /** Use O_DIRECT where the file system allows it (default true). */
  direct?: boolean;
}

/**
 * Page-aligned staging buffers shared by the files of one export: their number bounds the writes in
 * flight, and with it the memory, whatever the number of shards.
 */
export class StagingPool {
  private free: Uint8Array[];
  private waiting: ((b: Uint8Array) => void)[] = [];

  /**
   * `count` buffers of `bytes` (a multiple of 4 KiB) each: 16 x 1 MiB by default. Many small ones
   * rather than a few large: each write in flight holds a whole buffer however few of its bytes it
   * uses, and an MoE layer's writes are small (a 768 x 2048 expert's NVFP4 codes are 786 KB, its
   * scales 98 KB). With 4 x 4 MiB the Qwen3-MoE-shaped NVFP4 export waited 1.3-1.9 s on the disk
   * for 0.7 GB of such writes; with 16 x 1 MiB (the same memory), 0.25 s.
   */
  constructor(readonly bytes = 2 ** 20, count = 16) {
    if (bytes % PAGE !== 0 || bytes <= 0) throw new RangeError('staging buffers must be a positive multiple of 4 KiB');
    // page-aligned memory: a WebAssembly.Memory's base is the start of a mmap'd reservation
    const mem = new WebAssembly.Memory({ initial: Math.ceil((bytes * count) / 65536) });
    this.free = Array.from({ length: count }, (_, i) => new Uint8Array(mem.buffer, i * bytes, bytes));
  }

  acquire(): Promise<Uint8Array> {
    const b = this.free.pop();
    if (b) return Promise.resolve(b);
    return new Promise((resolve) => this.waiting.push(resolve));
  }

  release(b: Uint8Array): void {
    const w = this.waiting.shift();
    if (w) w(b);
    else this.free.push(b);
  }
}

interface PartialPage {
  data: Uint8Array;
  /** Bytes of the page written so far (writes never overlap: the shard writer checks it). */
  filled: number;
}

export class AlignedFile {
  private partial = new Map<number, PartialPage>();
  private inflight = new Set<Promise<void>>();
  private failure: OutputError | undefined;

  private constructor(
    readonly path: string,
    /** The exact length the file has when finished. */
    readonly length: number,
    private readonly fd: FileHandle,
    /** A buffered handle on the same file: reads of partial pages when resuming, truncation. */
    private readonly plain: FileHandle,
    readonly direct: boolean,
    private readonly existing: boolean,
    private readonly pool: StagingPool,
  ) {}

  static async open(path: string, length: number, pool: StagingPool, options: AlignedFileOptions = {}): Promise<AlignedFile> {
    const flags = constants.O_RDWR | constants.O_CREAT | (options.existing ? 0 : constants.O_TRUNC);
    const plain = await open(path, flags);
    let fd: FileHandle | undefined;
    if (options.direct !== false && constants.O_DIRECT !== undefined) {
      try {
        fd = await open(path, constants.O_RDWR | constants.O_DIRECT);
      } catch {
        fd = undefined; // EINVAL on tmpfs and friends: buffered it is
      }
    }
    try {
      await plain.truncate(length);
    } catch (e) {
      await plain.close();
      await fd?.close();
      throw ioError(path, e, 'cannot size the file');
    }
    return new AlignedFile(path, length, fd ?? plain, plain, fd !== undefined, options.existing ?? false, pool);
  }

  /** Writes `data` at byte `position`; returns once the bytes are copied out of `data`. */
  async write(data: Uint8Array, position: number): Promise<void> {
    this.throwIfFailed();
    const end = position + data.length;
    if (position < 0 || end > this.length) throw new OutputError(`${this.path}: write of [${position}, ${end}) outside the file's ${this.length} bytes`);
    // nothing to write: a page entry made for it would be written back as it stands at close,
    // over a page that may already be complete on disk
    if (data.length === 0) return;
    let at = position;
    // head: the rest of a page that starts before `position`
    if (at % PAGE !== 0 || end - at < PAGE) {
      const stop = Math.min(end, (Math.floor(at / PAGE) + 1) * PAGE);
      await this.toPartial(data.subarray(0, stop - position), at);
      at = stop;
    }
    // whole pages, staged and written in the background
    const wholeEnd = end - (end % PAGE === 0 || end === this.length ? 0 : end % PAGE);
    while (at < wholeEnd) {
      const buf = await this.staging();
      const n = Math.min(buf.length, wholeEnd - at);
      buf.set(data.subarray(at - position, at - position + n));
      this.background(buf, n, at);
      at += n;
    }
    // tail: the start of a page that ends after `end`
    if (at < end) await this.toPartial(data.subarray(at - position), at);
  }

  /** Writes every page held in memory as it stands (zeros where not yet written) and waits for the disk. */
  async flush(): Promise<void> {
    await this.writePartials();
    await this.fd.datasync().catch((e) => {
      throw ioError(this.path, e);
    });
    this.throwIfFailed();
  }

  /**
   * Waits for everything, writes the pages still held (when resuming, every page at a tensor
   * boundary; otherwise none but an unwritten range's), sets the exact length and closes.
   */
  async close(): Promise<void> {
    await this.writePartials();
    this.partial.clear();
    try {
      await this.plain.truncate(this.length); // an O_DIRECT write of the last page went past the end
      await this.fd.sync();
    } catch (e) {
      throw ioError(this.path, e);
    } finally {
      await this.release();
    }
  }

  /** Closes without finishing (abort); waits for writes in flight so nothing lands after removal. */
  async release(): Promise<void> {
    await Promise.allSettled([...this.inflight]);
    if (this.fd !== this.plain) await this.fd.close().catch(() => undefined);
    await this.plain.close().catch(() => undefined);
  }

  private async toPartial(bytes: Uint8Array, position: number): Promise<void> {
    const page = Math.floor(position / PAGE);
    let p = this.partial.get(page);
    if (!p) {
      p = { data: new Uint8Array(PAGE), filled: 0 };
      this.partial.set(page, p);
      // resuming: the page may hold bytes of units finished before the interruption
      if (this.existing) await this.plain.read(p.data, 0, PAGE, page * PAGE).catch((e) => Promise.reject(ioError(this.path, e)));
    }
    p.data.set(bytes, position - page * PAGE);
    p.filled += bytes.length;
    const pageLength = Math.min(PAGE, this.length - page * PAGE);
    if (p.filled >= pageLength && !this.existing) {
      this.partial.delete(page);
      await this.stagePage(page, p.data);
    }
  }

  /** Writes every page held in memory as it stands (zeros where not yet written) and waits for them. */
  private async writePartials(): Promise<void> {
    await this.drain();
    for (const [page, p] of this.partial) await this.stagePage(page, p.data);
    await this.drain();
  }

  /** One page's bytes to staging memory, written in the background. */
  private async stagePage(page: number, data: Uint8Array): Promise<void> {
    const buf = await this.staging();
    buf.set(data);
    this.background(buf, PAGE, page * PAGE);
  }

  private staging(): Promise<Uint8Array> {
    return this.pool.acquire();
  }

  /** Writes buf[0, n) at `position`, rounding n up to whole pages (bytes past the end are cut at close). */
  private background(buf: Uint8Array, n: number, position: number): void {
    const len = Math.ceil(n / PAGE) * PAGE;
    const p = (async () => {
      try {
        let done = 0;
        while (done < len) {
          const { bytesWritten } = await this.fd.write(buf, done, len - done, position + done);
          if (bytesWritten === 0) throw Object.assign(new Error('short write'), { code: 'EIO' });
          done += bytesWritten;
        }
      } catch (e) {
        this.failure ??= ioError(this.path, e);
      } finally {
        this.pool.release(buf);
      }
    })();
    this.inflight.add(p);
    void p.then(() => this.inflight.delete(p));
  }

  private async drain(): Promise<void> {
    while (this.inflight.size > 0) await Promise.all([...this.inflight]);
    this.throwIfFailed();
  }

  private throwIfFailed(): void {
    if (this.failure) throw this.failure;
  }
}

function ioError(path: string, e: unknown, what = 'write failed'): OutputError {
  const code = (e as NodeJS.ErrnoException).code;
  if (e instanceof OutputError) return e;
  if (code === 'ENOSPC') return new OutputError(`${path}: disk full while writing (ENOSPC)`);
  return new OutputError(`${path}: ${what} (${code ?? (e as Error).message})`);
}
