/** The task of one kernel over a chunk held in a slot: codes and scales placed in the slot's regions. */
import type { KernelKind } from '../formats/format.js';
import type { Slot } from './pool.js';
import type { ChunkInput, KernelTask } from './tasks.js';
import { FP8_BLOCK } from '../formats/fp8-block.js';
import { unpackNibblesK } from '../codecs/e2m1.js';

export interface ChunkOutputs {
  task: KernelTask;
  /**
   * One code per element, in the slot, once the task has run. NVFP4 tasks write only the packed
   * codes, which is what the checkpoint stores (16 bytes fewer written per 32 read), so this unpacks
   * them into the slot when called.
   */
  codes(): Uint8Array | Int8Array;
  /** The chunk's scales in the slot (none for per-tensor FP8). */
  scales?: Uint8Array | Float32Array;
  /** nvfp4 and int4: the codes packed two per byte as stored, in the slot (the task fills it). */
  packed?: Uint8Array;
}

/**
 * @param kernel the format record's kernel (`QuantFormat.kernel`)
 * @param base the chunk (source bytes in slot.src, rows, K, dtype, AWQ edits)
 * @param scale per-tensor FP8 weight_scale, or NVFP4 weight_scale_2
 * @param clip int4: AWQ-clip's ratio per (row, group) of the chunk's rows
 */
export function chunkTask(kernel: KernelKind, slot: Slot, base: Omit<ChunkInput, 'wasm' | 'lut'>, scale = 1, clip?: Float32Array): ChunkOutputs {
  const n = base.rows * base.K;
  const input: ChunkInput = { ...base, wasm: slot.wasm, lut: slot.lut };
  const f32 = (count: number) => new Float32Array(slot.scales.buffer, slot.scales.byteOffset, count);
  const codes = slot.codes.subarray(0, n);
  switch (kernel) {
    case 'fp8':
      return { task: { ...input, kind: 'fp8', scale, codes }, codes: () => codes };
    case 'fp8_block': {
      const scales = f32(Math.ceil(base.rows / FP8_BLOCK) * Math.ceil(base.K / FP8_BLOCK));
      return { task: { ...input, kind: 'fp8_block', codes, scales }, codes: () => codes, scales };
    }
    case 'nvfp4': {
      const scales = slot.scales.subarray(0, n / 16);
      const packed = slot.packed.subarray(0, n / 2);
      return { task: { ...input, kind: 'nvfp4', ws2: scale, scales, packed }, codes: () => unpackNibblesK(packed, codes), scales, packed };
    }
    case 'int4': {
      const q = new Int8Array(slot.codes.buffer, slot.codes.byteOffset, n);
      const scales = f32(n / 128);
      // row pairs: whole ones only (every chunk but a model's odd last row has an even count)
      const packed = base.rows % 2 === 0 ? slot.packed.subarray(0, n / 2) : undefined;
      return { task: { ...input, kind: 'int4', codes: q, scales, packed, ...(clip ? { clip } : {}) }, codes: () => q, scales, packed };
    }
  }
}
