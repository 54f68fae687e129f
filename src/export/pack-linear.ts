/** The stored layout of each format (spec §6): packing codes and naming the scale tensors. */
import { packNibblesK } from '../codecs/e2m1.js';
import { packInt4Rows } from '../codecs/int4.js';
import { encodeFromFloat32 } from '../codecs/float.js';
import type { FormatSpec } from './formats.js';
import type { OutputTensor, QuantizedChunk, QuantizedLinear, StreamedOutput } from '../pipeline/units.js';
import { FP8_BLOCK, fp8BlockScaleShape } from '../formats/fp8-block.js';

export function f32Scalar(name: string, x: number): OutputTensor {
  return { name, dtype: 'F32', shape: [], data: new Uint8Array(Float32Array.of(x).buffer) };
}

function bytesOf(a: Float32Array | Uint8Array | Int8Array): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

/** Scalars and pre_quant_scale of a linear (small, in memory). */
export function packLinearScalars(q: QuantizedLinear, format: FormatSpec): OutputTensor[] {
  const m = q.module;
  const out: OutputTensor[] = [];
  if (format.name === 'fp8') out.push(f32Scalar(`${m}.weight_scale`, q.weightScale!));
  if (q.weightScale2 !== undefined) out.push(f32Scalar(`${m}.weight_scale_2`, q.weightScale2));
  if (q.inputScale !== undefined) out.push(f32Scalar(`${m}.input_scale`, q.inputScale));
  if (q.preQuantScale) out.push({ name: `${m}.pre_quant_scale`, dtype: q.dtype, shape: [q.K], data: encodeFromFloat32(q.preQuantScale, q.dtype) });
  return out;
}

/** `weight` (and per-block `weight_scale`) of a linear, packed chunk by chunk into each chunk's slot. */
export function packLinearStream(q: QuantizedLinear, format: FormatSpec): StreamedOutput {
  const { module: m, N, K } = q;
  const w = `${m}.weight`;
  const ws = `${m}.weight_scale`;
  let tensors: StreamedOutput['tensors'];
  let pack: (c: QuantizedChunk) => { name: string; offset: number; data: Uint8Array }[];
  switch (format.name) {
    case 'fp8':
      tensors = [{ name: w, dtype: 'F8_E4M3', shape: [N, K] }];
      pack = (c) => [{ name: w, offset: c.row0 * K, data: bytesOf(c.codes) }];
      break;
    case 'fp8_pb_wo': {
      const BK = Math.ceil(K / FP8_BLOCK);
      tensors = [{ name: w, dtype: 'F8_E4M3', shape: [N, K] }, { name: ws, dtype: 'F32', shape: fp8BlockScaleShape(N, K) }];
      pack = (c) => [
        { name: w, offset: c.row0 * K, data: bytesOf(c.codes) },
        { name: ws, offset: (c.row0 / FP8_BLOCK) * BK * 4, data: bytesOf(c.scales!) },
      ];
      break;
    }
    case 'nvfp4':
    case 'nvfp4_awq':
      tensors = [{ name: w, dtype: 'U8', shape: [N, K / 2] }, { name: ws, dtype: 'F8_E4M3', shape: [N, K / 16] }];
      pack = (c) => [
        { name: w, offset: (c.row0 * K) / 2, data: c.packed ?? packNibblesK(c.codes as Uint8Array, c.slot.packed.subarray(0, (c.rows * K) / 2)) },
        { name: ws, offset: (c.row0 * K) / 16, data: bytesOf(c.scales!) },
      ];
      break;
    case 'int4_awq':
    case 'w4a8_awq':
      tensors = [{ name: w, dtype: 'U8', shape: [N / 2, K] }, { name: ws, dtype: 'F32', shape: [N, K / 128] }];
      pack = (c) => [
        { name: w, offset: (c.row0 / 2) * K, data: c.packed ?? packInt4Rows(c.codes as Int8Array, c.rows, K, c.slot.packed.subarray(0, (c.rows / 2) * K)) },
        { name: ws, offset: c.row0 * (K / 128) * 4, data: bytesOf(c.scales!) },
      ];
      break;
  }
  return {
    tensors,
    async *parts() {
      for await (const c of q.chunks()) yield { writes: pack(c), release: c.release };
    },
  };
}
