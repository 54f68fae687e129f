/**
 * The `fp8_pb_wo` export format (quant_algo "fp8_pb_wo", spec §6.3): e4m3 weights with one f32 scale
 * per 128x128 tile, stored as `weight_scale` [ceil(N/128), 1, ceil(K/128), 1]; activations stay 16-bit.
 * The math is in fp8-block.ts.
 */
import { bytesOf, f32Array, sameShape, unpackedShape, type EngineBlocker, type QuantFormat } from './format.js';
import { FP8_BLOCK, fp8BlockScaleShape, dequantizeFp8Block } from './fp8-block.js';

export const fp8_pb_wo: QuantFormat = {
  name: 'fp8_pb_wo',
  quantAlgo: 'fp8_pb_wo',
  awq: false,
  kMultiple: 1,
  evenRows: false,
  unifyGroups: true,
  foldsIntoPreviousLinear: false,
  description: 'FP8 E4M3 weights with 128x128 block scales, weight-only',
  kernel: 'fp8_block',
  rowMultiple: FP8_BLOCK,
  needsWeightAmax: false,
  tensorScales: () => ({}),
  kernelScale: () => 1,
  streamedTensors: (m, N, K) => [
    { name: `${m}.weight`, dtype: 'F8_E4M3', shape: [N, K] },
    { name: `${m}.weight_scale`, dtype: 'F32', shape: fp8BlockScaleShape(N, K) },
  ],
  scalars: [],
  packChunk: (m, K, c) => [
    { name: `${m}.weight`, offset: c.row0 * K, data: bytesOf(c.codes) },
    // a chunk is whole 128-row bands: its tile scales continue the tensor's row-major [BN, BK]
    { name: `${m}.weight_scale`, offset: (c.row0 / FP8_BLOCK) * Math.ceil(K / FP8_BLOCK) * 4, data: bytesOf(c.scales!) },
  ],
  checkStored: (m, w, ws) => {
    const failures: string[] = [];
    if (w.dtype !== 'F8_E4M3') failures.push(`${m}.weight must be F8_E4M3, is ${w.dtype}`);
    const [a, b] = w.shape as [number, number];
    const want = [Math.ceil(a / 128), 1, Math.ceil(b / 128), 1];
    const scaleOk = ws.dtype === 'F32' && sameShape(ws.shape, want);
    if (!scaleOk) failures.push(`${m}.weight_scale must be F32 [${want.join(', ')}], is ${ws.dtype} [${ws.shape.join(', ')}]`);
    return { failures, checkBlockScales: scaleOk };
  },
  dequantize: (weight, shape, scale) => {
    const [N, K] = shape as [number, number];
    return { w: dequantizeFp8Block(weight, N, K, f32Array(scale)), N, K };
  },
  activation: undefined,
  logicalShape: unpackedShape,
  /**
   * vLLM's ModelOptFp8PbWoLinearMethod.create_weights raises unless in_features and out_features
   * (per tensor-parallel partition) are multiples of its fixed 128x128 block; its merged QKV and
   * gate/up loaders fail on a member whose out_features is not (`start + length exceeds dimension
   * size`), spec engines.md §2.3 and §6 point 12. TensorRT-LLM pads its blocks.
   */
  loadBlockers: (linears) => {
    const out: EngineBlocker[] = [];
    for (const l of linears) {
      if (l.K % FP8_BLOCK !== 0) out.push({ engine: 'vLLM', reason: `${l.module}: in_features ${l.K} is not a multiple of 128 (vLLM's block-FP8 linear requires it)` });
      else if (l.N % FP8_BLOCK !== 0) {
        const what = l.fused ? "merged QKV / gate-up loader fails on a member" : 'block-FP8 linear requires out_features a multiple of 128';
        out.push({ engine: 'vLLM', reason: `${l.module}: out_features ${l.N} is not a multiple of 128 (vLLM's ${what})` });
      }
    }
    return out;
  },
  engines: [
    { engine: 'vLLM', loads: true, note: 'vLLM with PR #30957 (2025-12) or later; 128x128 block FP8' },
    { engine: 'SGLang', loads: false, note: 'not supported (SGLang takes only FP8 / NVFP4)' },
    { engine: 'TensorRT-LLM', loads: true, note: '1.x, mapped to FP8_BLOCK_SCALES' },
  ],
};
