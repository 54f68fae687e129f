/** The stored layout of each format (spec §6): packing codes and naming the scale tensors. */
import { packNibblesK } from '../codecs/e2m1.js';
import { packInt4Rows } from '../codecs/int4.js';
import { encodeFromFloat32 } from '../codecs/float.js';
import type { FormatSpec } from './formats.js';
import type { OutputTensor, QuantizedLinear } from '../pipeline/units.js';
import { fp8BlockScaleShape } from '../formats/fp8-block.js';

export function f32Scalar(name: string, x: number): OutputTensor {
  return { name, dtype: 'F32', shape: [], data: new Uint8Array(Float32Array.of(x).buffer) };
}

function bytesOf(a: Float32Array | Uint8Array | Int8Array): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

export function packLinear(q: QuantizedLinear, format: FormatSpec): OutputTensor[] {
  const { module: m, N, K } = q;
  const out: OutputTensor[] = [];
  switch (format.name) {
    case 'fp8':
      out.push({ name: `${m}.weight`, dtype: 'F8_E4M3', shape: [N, K], data: bytesOf(q.codes) });
      out.push(f32Scalar(`${m}.weight_scale`, q.weightScale[0]!));
      break;
    case 'fp8_pb_wo':
      out.push({ name: `${m}.weight`, dtype: 'F8_E4M3', shape: [N, K], data: bytesOf(q.codes) });
      out.push({ name: `${m}.weight_scale`, dtype: 'F32', shape: fp8BlockScaleShape(N, K), data: bytesOf(q.weightScale) });
      break;
    case 'nvfp4':
    case 'nvfp4_awq':
      out.push({ name: `${m}.weight`, dtype: 'U8', shape: [N, K / 2], data: packNibblesK(bytesOf(q.codes)) });
      out.push({ name: `${m}.weight_scale`, dtype: 'F8_E4M3', shape: [N, K / 16], data: bytesOf(q.weightScale) });
      out.push(f32Scalar(`${m}.weight_scale_2`, q.weightScale2!));
      break;
    case 'int4_awq':
    case 'w4a8_awq':
      out.push({ name: `${m}.weight`, dtype: 'U8', shape: [N / 2, K], data: packInt4Rows(q.codes as Int8Array, N, K) });
      out.push({ name: `${m}.weight_scale`, dtype: 'F32', shape: [N, K / 128], data: bytesOf(q.weightScale) });
      if (q.weightScale2 !== undefined) out.push(f32Scalar(`${m}.weight_scale_2`, q.weightScale2));
      break;
  }
  if (q.inputScale !== undefined) out.push(f32Scalar(`${m}.input_scale`, q.inputScale));
  if (q.preQuantScale) out.push({ name: `${m}.pre_quant_scale`, dtype: q.dtype, shape: [K], data: encodeFromFloat32(q.preQuantScale, q.dtype) });
  return out;
}
