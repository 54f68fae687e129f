/** The values that flow through the operator chain. */
import type { SourceModel } from '../model.js';
import type { TensorSource } from '../sources/source.js';
import type { DType, FloatDType } from '../safetensors/dtypes.js';
import type { ExportPlan } from './plan.js';
import type { Stats } from './stats.js';
import type { Slot } from '../kernels/pool.js';
import type { BandOf } from '../formats/format.js';

/** One decoder layer (or "the rest": embeddings, final norm, lm_head) as lazy tensor references. */
export interface ModelUnit {
  model: SourceModel;
  kind: 'layer' | 'rest';
  /** Layer index; -1 for the rest. */
  layer: number;
  /**
   * Set by `quantize` on a layer it emits in several parts (its linears in groups, the first part with
   * the layer's other tensors): part `index` of `count`. Absent on a whole unit.
   */
  part?: { index: number; count: number };
  tensors: TensorSource[];
  /** Activation statistics for this unit's modules, attached by `calibrate`. */
  stats?: Stats;
  /** Frees this unit's slot in the layers-in-flight budget (writeShards calls it once the unit is on disk). */
  release(): void;
}

/**
 * A unit's id, "layer 7", "layer 7 part 2/5" or "rest": what the resume journal records finished
 * units by, and what a distributed work plan lists a shard task's (whole, source) units by.
 */
export function unitId(u: Pick<ModelUnit, 'kind' | 'layer' | 'part'>): string {
  const base = u.kind === 'layer' ? `layer ${u.layer}` : 'rest';
  return u.part ? `${base} part ${u.part.index + 1}/${u.part.count}` : base;
}

/** A row range of a quantized linear: codes (one per element) and the scales of those rows. */
export interface QuantizedChunk {
  row0: number;
  rows: number;
  /**
   * One code per weight element, row-major [rows, K]: e4m3 bytes (fp8, fp8_pb_wo), e2m1 nibbles
   * (nvfp4*), or signed int4 values (int4_awq, w4a8_awq). nvfp4's kernel writes only `packed`; the
   * first read of `codes` unpacks them (into the slot), so a chain that never reads them pays nothing.
   */
  codes: Uint8Array | Int8Array;
  /** nvfp4: e4m3 bytes [rows, K/16]; int4: f32 [rows, K/128]; fp8_pb_wo: f32 per 128x128 tile of these rows; fp8: none. */
  scales?: Uint8Array | Float32Array;
  /**
   * nvfp4, int4: the codes already packed two per byte by the kernel (in `slot.packed`), which `pack`
   * writes as they are. An operator that changes `codes` must set this to undefined (then `pack`
   * packs the codes itself).
   */
  packed?: Uint8Array;
  /** Shared memory the chunk lives in; `pack` writes the stored layout into `slot.packed`. */
  slot: Slot;
  /** Returns the slot to the pool (writeShards calls it once the chunk is on disk). */
  release(): void;
  /** A fused expert parameter's chunk: expert and input rows it covers (its codes are [B, a1 - a0], transposed). */
  band?: BandOf;
}

/** Scales of one quantized linear, with its codes streamed in row chunks (no whole tensor is held). */
export interface QuantizedLinear {
  module: string;
  /** out_features, in_features (a fused expert parameter: its [E*A, B] rows) */
  N: number;
  K: number;
  /** A fused 3-D expert parameter [E, A, B] (Llama 4), named without `.weight`. */
  fused?: { E: number; A: number; B: number };
  /** The source weight's dtype (pre_quant_scale is stored in it). */
  dtype: FloatDType;
  /** fp8: the per-tensor weight_scale. */
  weightScale?: number;
  weightScale2?: number;
  inputScale?: number;
  /** In the source dtype's values (already rounded to it); present only where not folded away. */
  preQuantScale?: Float32Array;
  /**
   * The quantized rows in order. Iterate once; release every chunk. Work happens here, as the
   * consumer pulls, with a few chunks prefetched in worker threads.
   */
  chunks(): AsyncIterable<QuantizedChunk>;
}

export interface QuantizedUnit extends ModelUnit {
  plan: ExportPlan;
  linears: QuantizedLinear[];
  /** Unquantized tensors whose bytes changed (norms and biases that absorbed a pre_quant_scale). */
  replaced: Map<string, Uint8Array>;
  /** KV-cache scales by output name (`...k_proj.k_scale`). */
  kvScales: Map<string, number>;
}

/** A tensor ready for the writer: bytes in memory, or a source tensor copied through unchanged. */
export type OutputTensor =
  | { name: string; dtype: DType; shape: readonly number[]; data: Uint8Array }
  | { name: string; dtype: DType; shape: readonly number[]; source: TensorSource };

/** Byte ranges of several output tensors produced together, chunk by chunk (a linear's weight and weight_scale). */
export interface StreamedOutput {
  tensors: { name: string; dtype: DType; shape: readonly number[] }[];
  parts(): AsyncIterable<{ writes: { name: string; offset: number; data: Uint8Array }[]; release(): void }>;
}

export interface PackedUnit extends QuantizedUnit {
  outputs: OutputTensor[];
  streams: StreamedOutput[];
}
