/**
 * The `int4_awq` export format (quant_algo "W4A16_AWQ", spec §6.8): signed int4 weights, one f32
 * scale per 128 input channels, packed as pairs of output rows (`weight` U8 [N/2, K], row 2i in the
 * low nibble); an AWQ `pre_quant_scale` per input channel; activations stay 16-bit. Math in int4.ts.
 */
import { packInt4Rows, unpackInt4Rows } from '../codecs/int4.js';
import { bytesOf, f32Array, noBlockers, sameShape, type QuantFormat } from './format.js';
import { INT4_GROUP, dequantizeInt4, fakeQuantizeInt4InPlace } from './int4.js';

export const int4_awq: QuantFormat = {
  name: 'int4_awq',
  quantAlgo: 'W4A16_AWQ',
  groupSize: INT4_GROUP,
  awq: true,
  kMultiple: INT4_GROUP,
  evenRows: true,
  unifyGroups: true,
  foldsIntoPreviousLinear: false,
  description: 'INT4 weights (group 128) with AWQ pre-quant scales, 16-bit activations',
  kernel: 'int4',
  rowMultiple: 2,
  needsWeightAmax: false,
  tensorScales: () => ({}),
  kernelScale: () => 1,
  streamedTensors: (m, N, K) => [
    { name: `${m}.weight`, dtype: 'U8', shape: [N / 2, K] },
    { name: `${m}.weight_scale`, dtype: 'F32', shape: [N, K / INT4_GROUP] },
  ],
  scalars: [],
  packChunk: (m, K, c) => [
    { name: `${m}.weight`, offset: (c.row0 / 2) * K, data: c.packed ?? packInt4Rows(c.codes as Int8Array, c.rows, K, c.slot.packed.subarray(0, (c.rows / 2) * K)) },
    { name: `${m}.weight_scale`, offset: c.row0 * (K / INT4_GROUP) * 4, data: bytesOf(c.scales!) },
  ],
  checkStored: (m, w, ws) => {
    const failures: string[] = [];
    const [a, b] = w.shape as [number, number];
    const N = a * 2;
    if (w.dtype !== 'U8') failures.push(`${m}.weight must be U8 (int4 row pairs), is ${w.dtype}`);
    const scaleOk = ws.dtype === 'F32' && sameShape(ws.shape, [N, b / INT4_GROUP]);
    if (!scaleOk) failures.push(`${m}.weight_scale must be F32 [${N}, ${b / INT4_GROUP}], is ${ws.dtype} [${ws.shape.join(', ')}]`);
    return { failures, checkBlockScales: scaleOk };
  },
  dequantize: (weight, shape, scale) => {
    const N = shape[0]! * 2, K = shape[1]!;
    return { w: dequantizeInt4(unpackInt4Rows(weight, N, K), N, K, f32Array(scale)), N, K };
  },
  activation: undefined,
  fakeQuantize: (w, N, K) => fakeQuantizeInt4InPlace(w.slice(), N, K),
  fakeQuantizeInPlace: (w, N, K, _amax, clip) => fakeQuantizeInt4InPlace(w, N, K, undefined, clip), // per-block scales only
  awqClip: 'blocks',
  logicalShape: (s) => [s[0]! * 2, s[1]!],
  loadBlockers: noBlockers,
  engines: [
    { engine: 'vLLM', loads: false, note: "the AWQ family is not in vLLM's ModelOpt loader" },
    { engine: 'SGLang', loads: true, note: 'experimental' },
    { engine: 'TensorRT-LLM', loads: true, note: 'SM80+' },
  ],
};
