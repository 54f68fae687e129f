/**
 * The heavy per-linear kernels, as plain functions of typed arrays. They run in Piscina worker
 * threads (worker.ts) or inline when the pool has no workers; results are identical either way.
 */
import { fp8LutForBf16, quantizeFp8, quantizeFp8Bf16Lut } from '../formats/fp8.js';
import { fp8BlockScales, quantizeFp8Block } from '../formats/fp8-block.js';
import { quantizeNvfp4 } from '../formats/nvfp4.js';
import { int4Scales, quantizeInt4 } from '../formats/int4.js';
import type { FloatDType } from '../safetensors/dtypes.js';

export type KernelTask =
  /** codes = e4m3(dtype(w / scale)) */
  | { kind: 'fp8'; w: Float32Array; dtype: FloatDType; scale: number }
  /** 128x128 tile scales and codes */
  | { kind: 'fp8_block'; w: Float32Array; N: number; K: number }
  /** e2m1 codes and e4m3 block scales under global scale ws2 */
  | { kind: 'nvfp4'; w: Float32Array; N: number; K: number; ws2: number }
  /** int4 q and f32 group scales */
  | { kind: 'int4'; w: Float32Array; N: number; K: number };

export interface KernelResult {
  codes: Uint8Array | Int8Array;
  scales?: Float32Array | Uint8Array;
}

/** Below this many elements, building the 64K-entry bf16 table costs more than it saves. */
const LUT_MIN_ELEMENTS = 1 << 18;

export function runKernel(task: KernelTask): KernelResult {
  switch (task.kind) {
    case 'fp8': {
      if (task.dtype === 'BF16' && task.w.length >= LUT_MIN_ELEMENTS) {
        const bits = new Uint16Array(task.w.length);
        const u32 = new Uint32Array(task.w.buffer, task.w.byteOffset, task.w.length);
        for (let i = 0; i < bits.length; i++) bits[i] = u32[i]! >>> 16; // exact: the values are bf16
        return { codes: quantizeFp8Bf16Lut(bits, fp8LutForBf16(task.scale)) };
      }
      return { codes: quantizeFp8(task.w, task.scale, task.dtype) };
    }
    case 'fp8_block': {
      const scales = fp8BlockScales(task.w, task.N, task.K);
      return { codes: quantizeFp8Block(task.w, task.N, task.K, scales), scales };
    }
    case 'nvfp4': {
      const { codes, scales } = quantizeNvfp4(task.w, task.N, task.K, task.ws2);
      return { codes, scales };
    }
    case 'int4': {
      const scales = int4Scales(task.w, task.N, task.K);
      return { codes: quantizeInt4(task.w, task.N, task.K, scales), scales };
    }
  }
}
