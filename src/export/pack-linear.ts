/** The stored layout of a quantized linear (spec §6): the format record names and packs its tensors. */
import { encodeFromFloat32 } from '../codecs/float.js';
import type { FormatSpec } from './formats.js';
import { fusedPartName, type ScalarName } from '../formats/format.js';
import type { OutputTensor, QuantizedLinear, StreamedOutput } from './units.js';

export function f32Scalar(name: string, x: number): OutputTensor {
  return { name, dtype: 'F32', shape: [], data: new Uint8Array(Float32Array.of(x).buffer) };
}

const SCALAR_VALUE: Record<ScalarName, (q: QuantizedLinear) => number | undefined> = {
  weight_scale: (q) => q.weightScale,
  weight_scale_2: (q) => q.weightScale2,
  input_scale: (q) => q.inputScale,
};

/** Scalars and pre_quant_scale of a linear (small, in memory). */
export function packLinearScalars(q: QuantizedLinear, format: FormatSpec): OutputTensor[] {
  const m = q.module;
  const out: OutputTensor[] = [];
  for (const s of format.scalars) {
    const v = SCALAR_VALUE[s](q);
    if (v !== undefined) out.push(f32Scalar(q.fused ? fusedPartName(m, s) : `${m}.${s}`, v));
  }
  if (q.preQuantScale) out.push({ name: `${m}.pre_quant_scale`, dtype: q.dtype, shape: [q.K], data: encodeFromFloat32(q.preQuantScale, q.dtype) });
  return out;
}

/** `weight` (and per-block `weight_scale`) of a linear, packed chunk by chunk into each chunk's slot. */
export function packLinearStream(q: QuantizedLinear, format: FormatSpec): StreamedOutput {
  const { module: m, N, K } = q;
  if (q.fused) {
    const { E, A, B } = q.fused;
    const f = format.fused!;
    return {
      tensors: f.streamedTensors(m, E, A, B),
      async *parts() {
        for await (const c of q.chunks()) yield { writes: f.packChunk(m, E, A, B, c), release: c.release };
      },
    };
  }
  return {
    tensors: format.streamedTensors(m, N, K),
    async *parts() {
      for await (const c of q.chunks()) yield { writes: format.packChunk(m, K, c), release: c.release };
    },
  };
}
