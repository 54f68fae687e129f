/**
 * Worker threads for the kernels (Piscina), and the shared-memory slots chunks travel in.
 * A slot holds one chunk from the moment it is read until its packed bytes are written, so the
 * number of slots bounds memory; buffers are allocated once and reused (first touch of fresh
 * memory costs ~0.6 s/GiB on this machine).
 */
import { Piscina } from 'piscina';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { cpus } from 'node:os';
import { runKernel, type KernelTask, type KernelResult } from './tasks.js';

/** The compiled worker: beside this file in dist/, or dist/ mirrored when running from TypeScript sources. */
function workerPath(): string {
  const here = fileURLToPath(import.meta.url);
  const candidates = [here.replace(/pool\.(ts|js)$/, 'worker.js'), here.replace(/[\\/]src[\\/]kernels[\\/]pool\.ts$/, '/dist/src/kernels/worker.js')];
  const found = candidates.find((p) => p.endsWith('.js') && existsSync(p));
  if (!found) throw new Error(`kernel worker not built (looked for ${candidates.join(', ')}); run "npm run build"`);
  return found;
}

export function defaultWorkers(): number {
  return Math.max(1, cpus().length);
}

/** Source bytes per chunk (default 8 MiB). */
export const DEFAULT_CHUNK_BYTES = 8 * 2 ** 20;

/** One chunk's worth of shared buffers: source bytes, one code per element, packed output, scales. */
export interface Slot {
  src: Uint8Array;
  codes: Uint8Array;
  packed: Uint8Array;
  scales: Uint8Array;
}

function shared(bytes: number): Uint8Array {
  return new Uint8Array(new SharedArrayBuffer(bytes));
}

export class KernelPool {
  private piscina: Piscina | undefined;
  private free: Slot[] = [];
  private waiting: ((s: Slot) => void)[] = [];
  private slotBytes: number;
  private allocated = 0;

  constructor(
    readonly workers: number = defaultWorkers(),
    /** Source bytes per chunk. */
    readonly chunkBytes: number = DEFAULT_CHUNK_BYTES,
    /** Slots in circulation: chunks being read, quantized or written at once. */
    readonly slots: number = Math.max(2, workers) + 2,
  ) {
    this.slotBytes = chunkBytes;
    if (workers > 0) {
      this.piscina = new Piscina({ filename: workerPath(), minThreads: workers, maxThreads: workers, idleTimeout: 1000 });
    }
  }

  /** Rows of a weight [N, K] of `elemBytes`-byte elements that fit a chunk, a multiple of `multiple` (at least one multiple). */
  rowsPerChunk(K: number, elemBytes: number, multiple: number): number {
    const rows = Math.floor(this.chunkBytes / (K * elemBytes));
    return Math.max(multiple, rows - (rows % multiple));
  }

  /** Makes sure slots can hold `srcBytes` of source (a chunk that must be larger than the default). */
  private ensureCapacity(srcBytes: number): void {
    if (srcBytes <= this.slotBytes) return;
    this.slotBytes = srcBytes;
    this.free = []; // the old, smaller slots are dropped as they come back
  }

  async acquire(srcBytes: number): Promise<Slot> {
    this.ensureCapacity(srcBytes);
    const s = this.free.pop();
    if (s && s.src.length >= srcBytes) return s;
    if (this.allocated < this.slots) {
      this.allocated++;
      const b = this.slotBytes;
      // codes: one byte per element (at most b/2 elements of 16-bit sources, b/4 of f32: b is ample)
      return { src: shared(b), codes: shared(b), packed: shared(b), scales: shared(Math.ceil(b / 8) + 4096) };
    }
    const got = await new Promise<Slot>((resolve) => this.waiting.push(resolve));
    if (got.src.length >= srcBytes) return got;
    return { src: shared(this.slotBytes), codes: shared(this.slotBytes), packed: shared(this.slotBytes), scales: shared(Math.ceil(this.slotBytes / 8) + 4096) };
  }

  release(slot: Slot): void {
    const next = this.waiting.shift();
    if (next) next(slot);
    else if (slot.src.length >= this.slotBytes) this.free.push(slot);
    else this.allocated--;
  }

  async run(task: KernelTask): Promise<KernelResult> {
    if (!this.piscina) return runKernel(task);
    return (await this.piscina.run(task)) as KernelResult;
  }

  async close(): Promise<void> {
    const p = this.piscina;
    this.piscina = undefined;
    this.free = [];
    await p?.destroy();
  }
}
