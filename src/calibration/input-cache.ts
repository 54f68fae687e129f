/**
 * The inputs each linear of one layer saw during its calibration forward pass, kept for the AWQ
 * search that follows it: one [T, K] copy per forward call (a batch), shared by the linears of a
 * fused group that read the same input (q/k/v, gate/up: stored once). Copies stay in memory up to a
 * budget, then go to a temporary file (one batch in memory at a time when read back). Reading back
 * returns the batches in the order they were seen.
 */
import { mkdtemp, open, rm, type FileHandle } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { AwqBatch } from './awq.js';

interface Entry {
  T: number;
  K: number;
  /** In memory, or at `offset` in the spill file. */
  x?: Float32Array;
  offset?: number;
}

export const DEFAULT_INPUT_CACHE_BYTES = 2 * 2 ** 30;

export class AwqInputCache {
  private byModule = new Map<string, Entry[]>();
  private last?: { module: string; x: Float32Array; T: number; entry: Entry };
  private inMemory = 0;
  private file?: FileHandle;
  private folder?: string;
  private fileEnd = 0;
  private pending: Promise<void> = Promise.resolve();

  /**
   * @param sameInput whether two modules read one input when reported one after the other with the same array
   *   (members of one fused group)
   */
  constructor(
    private readonly sameInput: (a: string, b: string) => boolean,
    private readonly budgetBytes = DEFAULT_INPUT_CACHE_BYTES,
    private readonly dir = tmpdir(),
  ) {}

  /** x [T, K]: the input `module` saw in one forward call (copied: the caller may reuse x). */
  observe(module: string, x: Float32Array, T: number, K: number): void {
    const l = this.last;
    let entry: Entry;
    if (l && l.x === x && l.T === T && this.sameInput(l.module, module)) entry = l.entry;
    else {
      const copy = x.slice(0, T * K);
      entry = { T, K };
      if (this.inMemory + copy.byteLength <= this.budgetBytes) {
        entry.x = copy;
        this.inMemory += copy.byteLength;
      } else {
        entry.offset = this.fileEnd;
        this.fileEnd += copy.byteLength;
        this.pending = this.pending.then(() => this.spill(copy, entry.offset!));
      }
    }
    this.last = { module, x, T, entry };
    let list = this.byModule.get(module);
    if (!list) this.byModule.set(module, (list = []));
    list.push(entry);
  }

  private async spill(copy: Float32Array, offset: number): Promise<void> {
    if (!this.file) {
      this.folder = await mkdtemp(join(this.dir, 'rxquant-awq-'));
      this.file = await open(join(this.folder, 'inputs.f32'), 'w+');
    }
    await this.file.write(new Uint8Array(copy.buffer, copy.byteOffset, copy.byteLength), 0, copy.byteLength, offset);
  }

  /** Whether any input of `module` was seen. */
  has(module: string): boolean {
    return this.byModule.has(module);
  }

  /** The batches `module` saw, in order. */
  async *batches(module: string): AsyncIterable<AwqBatch> {
    await this.pending;
    for (const e of this.byModule.get(module) ?? []) {
      if (e.x) yield { x: e.x, T: e.T };
      else {
        const x = new Float32Array(e.T * e.K);
        await this.file!.read(new Uint8Array(x.buffer), 0, x.byteLength, e.offset!);
        yield { x, T: e.T };
      }
    }
  }

  /** Whether some batches live in the temporary file. */
  get spilled(): boolean {
    return this.fileEnd > 0;
  }

  async close(): Promise<void> {
    await this.pending.catch(() => undefined);
    this.byModule.clear();
    this.last = undefined;
    await this.file?.close();
    if (this.folder) await rm(this.folder, { recursive: true, force: true });
    this.file = undefined;
  }
}
