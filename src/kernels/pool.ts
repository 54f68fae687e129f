/**
 * Worker threads for the kernels (Piscina), and the shared-memory slots chunks travel in.
 *
 * All slots are regions of one shared WebAssembly.Memory that every worker instantiates the SIMD
 * kernels over, so a task carries only views (addresses) and nothing is copied between threads.
 * Tasks reach each worker through a mailbox (mailbox.ts): one long Piscina task per worker that
 * takes kernel tasks as they are posted, instead of a Piscina task per chunk. A
 * slot holds one chunk from the moment it is read until its packed bytes are written, so the number
 * of slots bounds memory; the buffers are allocated once and reused (first touch of fresh memory
 * costs ~0.6 s/GiB on this machine).
 */
import { Piscina } from 'piscina';
import { existsSync } from 'node:fs';
import type { MessagePort } from 'node:worker_threads';
import { fileURLToPath } from 'node:url';
import { cpus } from 'node:os';
import { runKernel, type KernelTask, type KernelResult } from './tasks.js';
import { PAGE } from '../safetensors/aligned-file.js';
import { compileKernels, createSharedMemory, instantiate, WASM_RESERVED, type KernelCode, type WasmKernels } from './wasm.js';
import { Mailbox, mailboxControl, type ServeArgs } from './mailbox.js';
import type { WorkerServeArgs } from './worker.js';

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

/** One chunk's worth of shared buffers: source bytes, one code per element, packed output, scales, scratch. */
export interface Slot {
  src: Uint8Array;
  codes: Uint8Array;
  packed: Uint8Array;
  scales: Uint8Array;
  lut: Uint8Array;
  /** The views lie in the kernels' WebAssembly memory (the SIMD kernels can run on them). */
  wasm: boolean;
}

/**
 * Scratch per slot (`Slot.lut`): the 64 KiB FP8 table, NVFP4's tables, and the AWQ edits' vectors,
 * up to two f32 vectors of 32K (a 405B model's hidden size is 16K, its intermediate 53K, whose one
 * vector of divCol fits too). Pages never touched cost no memory.
 */
export const SCRATCH_BYTES = 256 * 1024;

const align = (n: number) => Math.ceil(n / 64) * 64;
const pageAlign = (n: number) => Math.ceil(n / PAGE) * PAGE;

/** A slot's regions; every one starts on a page, so slots do too (the memory's base is page-aligned). */
function layout(bytes: number) {
  const scales = pageAlign(Math.ceil(bytes / 8) + 4096);
  const codes = pageAlign(bytes), packed = codes + pageAlign(bytes), sc = packed + pageAlign(bytes), lut = sc + scales;
  return { src: 0, codes, packed, scales: sc, lut, size: lut + SCRATCH_BYTES };
}

function slotIn(buffer: ArrayBufferLike, base: number, bytes: number, wasm: boolean): Slot {
  const l = layout(bytes);
  return {
    src: new Uint8Array(buffer, base + l.src, bytes),
    codes: new Uint8Array(buffer, base + l.codes, bytes),
    packed: new Uint8Array(buffer, base + l.packed, bytes),
    scales: new Uint8Array(buffer, base + l.scales, l.lut - l.scales),
    lut: new Uint8Array(buffer, base + l.lut, SCRATCH_BYTES),
    wasm,
  };
}

export class KernelPool {
  private piscina: Piscina | undefined;
  /** One per worker: tasks go to the worker with the fewest unanswered (mailbox.ts). */
  private mailboxes: Mailbox[] = [];
  private kernels: WasmKernels | undefined;
  private free: Slot[] = [];
  private waiting: ((s: Slot) => void)[] = [];
  private ready: Promise<void>;
  private closed = false;
  /** Tasks sent to the workers and not yet answered: close() waits for them. */
  private inflight = new Set<Promise<unknown>>();

  constructor(
    readonly workers: number = defaultWorkers(),
    /** Source bytes per chunk. */
    readonly chunkBytes: number = DEFAULT_CHUNK_BYTES,
    /** Slots in circulation: chunks being read, quantized or written at once. */
    readonly slots: number = 2 * Math.max(2, workers) + 1,
  ) {
    this.chunkBytes = align(chunkBytes);
    this.ready = this.init();
    this.ready.catch(() => undefined);
  }

  private async init(): Promise<void> {
    let code: KernelCode | undefined;
    let memory: WebAssembly.Memory | undefined;
    try {
      code = await compileKernels();
      memory = createSharedMemory(this.slots * layout(this.chunkBytes).size);
      for (let i = 0; i < this.slots; i++) this.free.push(slotIn(memory.buffer, WASM_RESERVED + i * layout(this.chunkBytes).size, this.chunkBytes, true));
      if (this.workers === 0) this.kernels = instantiate(code, memory);
    } catch {
      // no SIMD here: plain JavaScript kernels over ordinary shared buffers
      code = undefined;
      memory = undefined;
      this.free = [];
      for (let i = 0; i < this.slots; i++) this.free.push(slotIn(new SharedArrayBuffer(layout(this.chunkBytes).size), 0, this.chunkBytes, false));
    }
    if (this.workers > 0 && !this.closed) {
      this.piscina = new Piscina({
        filename: workerPath(),
        minThreads: this.workers,
        maxThreads: this.workers,
        idleTimeout: 1000,
      });
      // a late answer after destroy() is reported as an 'error' event; with no listener it would
      // end the process (close() waits for answers, so this is a last resort)
      this.piscina.on('error', () => undefined);
      const ctl = mailboxControl(this.workers);
      const piscina = this.piscina;
      // each mailbox's serve call takes an idle worker (Piscina runs one task per worker)
      const launch = (args: ServeArgs, transferList: MessagePort[]) => piscina.run({ ...args, code, memory } satisfies WorkerServeArgs, { name: 'serve', transferList });
      for (let index = 0; index < this.workers; index++) this.mailboxes.push(new Mailbox(ctl, index, launch));
    }
  }

  /** Rows of a weight [N, K] of `elemBytes`-byte elements that fit a chunk, a multiple of `multiple` (at least one multiple). */
  rowsPerChunk(K: number, elemBytes: number, multiple: number): number {
    const rows = Math.floor(this.chunkBytes / (K * elemBytes));
    return Math.max(multiple, rows - (rows % multiple));
  }

  /** A slot with room for `srcBytes` of source; waits for one to come back when all are in use. */
  async acquire(srcBytes: number): Promise<Slot> {
    await this.ready;
    if (srcBytes > this.chunkBytes) {
      // a row range larger than a chunk (very wide rows): a one-off buffer, JavaScript kernels
      return slotIn(new SharedArrayBuffer(layout(align(srcBytes)).size), 0, align(srcBytes), false);
    }
    const s = this.free.pop();
    if (s) return s;
    return new Promise<Slot>((resolve) => this.waiting.push(resolve));
  }

  release(slot: Slot): void {
    if (slot.src.length > this.chunkBytes) return; // one-off: garbage
    const next = this.waiting.shift();
    if (next) next(slot);
    else this.free.push(slot);
  }

  async run(task: KernelTask): Promise<KernelResult> {
    await this.ready;
    if (!this.piscina) return runKernel(task, this.kernels);
    const live = this.mailboxes.filter((m) => m.alive);
    if (live.length === 0) throw new Error('kernel workers are gone (a worker thread failed; see the error before this one)');
    const box = live.reduce((a, b) => (b.outstanding < a.outstanding ? b : a));
    const p = box.post<KernelResult>(task);
    this.inflight.add(p);
    try {
      return await p;
    } finally {
      this.inflight.delete(p);
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.ready.catch(() => undefined);
    // an error elsewhere (a NaN found by one scan task) can close the pool while other tasks run:
    // destroying the workers under them would leave their answers nowhere to go
    await Promise.allSettled([...this.inflight]);
    for (const m of this.mailboxes) m.stop();
    await Promise.all(this.mailboxes.map((m) => m.serving));
    this.mailboxes = [];
    const p = this.piscina;
    this.piscina = undefined;
    this.free = [];
    await p?.destroy();
  }
}
