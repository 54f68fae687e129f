/** The values that flow through the operator chain. */
import type { SourceModel } from '../model.js';
import type { TensorRef } from '../safetensors/file.js';
import type { DType, FloatDType } from '../safetensors/dtypes.js';
import type { ExportPlan } from '../export/plan.js';
import type { Stats } from '../export/stats.js';

/** One decoder layer (or "the rest": embeddings, final norm, lm_head) as lazy tensor references. */
export interface ModelUnit {
  model: SourceModel;
  kind: 'layer' | 'rest';
  /** Layer index; -1 for the rest. */
  layer: number;
  tensors: TensorRef[];
  /** Activation statistics for this unit's modules, attached by `calibrate`. */
  stats?: Stats;
  /** Frees this unit's slot in the layers-in-flight budget (writeShards calls it once the unit is on disk). */
  release(): void;
}

/** Codes and scales of one quantized linear, before packing. */
export interface QuantizedLinear {
  module: string;
  /** out_features, in_features */
  N: number;
  K: number;
  /** The source weight's dtype (pre_quant_scale is stored in it). */
  dtype: FloatDType;
  /**
   * One code per weight element, row-major [N, K]: e4m3 bytes (fp8, fp8_pb_wo), e2m1 nibbles (nvfp4*),
   * or signed int4 values in an Int8Array (int4_awq, w4a8_awq).
   */
  codes: Uint8Array | Int8Array;
  /** fp8: [1]; fp8_pb_wo: f32 per 128x128 tile; nvfp4: e4m3 bytes per 16; int4: f32 per 128. */
  weightScale: Float32Array | Uint8Array;
  weightScale2?: number;
  inputScale?: number;
  /** In the source dtype's values (already rounded to it); present only where not folded away. */
  preQuantScale?: Float32Array;
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
  | { name: string; dtype: DType; shape: readonly number[]; source: TensorRef };

export interface PackedUnit extends QuantizedUnit {
  outputs: OutputTensor[];
}
