/**
 * One record per export format (ggml's `type_traits` idea): everything the rest of rxquant needs to
 * know about a format lives in its record, and the planner, quantizer, packer, verifier, evaluator
 * and engine table read the record instead of switching on the format's name. A new format is one
 * new file in this folder plus one line in `registry.ts`.
 *
 * The records sit below the kernels and the export code: they import only codecs and the
 * quantization math of this folder.
 */
import type { DType } from '../safetensors/dtypes.js';
import type { PyValue } from '../util/pyjson.js';

export type EngineName = 'vLLM' | 'SGLang' | 'TensorRT-LLM';

/** Which engines load a format (spec engines.md §1, §5, §6.13-14), for `plan` and `verify`. */
export interface EngineSupport {
  engine: EngineName;
  loads: boolean;
  note: string;
  /** What in this particular export stops the engine from loading it (shapes its loader refuses). */
  blockers?: string[];
}

/** A quantized linear as an engine's loader sees it: logical [N, K] and whether it is part of a fused group. */
export interface LinearShape {
  module: string;
  N: number;
  K: number;
  /** Member of a fused group (q/k/v, gate/up) that engines load as one merged linear. */
  fused: boolean;
}

/** A condition of one engine's loader that an export's shapes break. */
export interface EngineBlocker {
  engine: EngineName;
  reason: string;
}

/** A tensor the export writes: name, dtype and shape (the writer lays shards out from these). */
export interface TensorShape {
  name: string;
  dtype: DType;
  shape: number[];
}

/** The part of a quantized row chunk a record packs (structurally `QuantizedChunk`). */
export interface CodesChunk {
  row0: number;
  rows: number;
  /** One code per element, row-major [rows, K]. */
  readonly codes: Uint8Array | Int8Array;
  scales?: Uint8Array | Float32Array;
  /** The codes already packed as stored, where the kernel did it. */
  packed?: Uint8Array;
  /** Shared memory of the chunk: `packed` is where a record packs codes itself. */
  slot: { packed: Uint8Array };
}

/** Where a chunk of a fused expert parameter comes from: expert `expert`, input rows [a0, a1) (see FusedExperts). */
export interface BandOf {
  expert: number;
  a0: number;
  a1: number;
}

/**
 * How a format stores a fused 3-D expert parameter m [E, A, B] (A = in features, Llama 4's
 * `experts.gate_up_proj` / `down_proj`, spec families.md §4.3): the tensor is named `m` itself and its
 * scales `m_weight_scale`, `m_weight_scale_2`, `m_input_scale`; one per-tensor scale set for the
 * whole parameter.
 */
export interface FusedExperts {
  /**
   * 'rows': elementwise formats quantize the parameter as [E*A, B] rows in its stored order;
   * 'bands': block formats quantize along A, so each chunk is expert e's input rows [a0, a1)
   * transposed to [B, a1 - a0] (a multiple of the block), and packChunk transposes back.
   */
  layout: 'rows' | 'bands';
  streamedTensors(m: string, E: number, A: number, B: number): TensorShape[];
  packChunk(m: string, E: number, A: number, B: number, c: CodesChunk & { band?: BandOf }): ChunkWrite[];
}

/** A tensor name of a fused expert parameter: the weight is `m`, its other parts `m_part`. */
export const fusedPartName = (m: string, part: string): string => (part === 'weight' ? m : `${m}_${part}`);

/** A byte range of one output tensor. */
export interface ChunkWrite {
  name: string;
  offset: number;
  data: Uint8Array;
}

/** Per-tensor scales of one quantized linear. */
export interface TensorScales {
  /** FP8 per-tensor `weight_scale`. */
  weightScale?: number;
  /** NVFP4 / W4A8 `weight_scale_2`. */
  weightScale2?: number;
}

/** The per-linear scalar tensors a format writes, by the name they take after `<module>.`. */
export type ScalarName = 'weight_scale' | 'weight_scale_2' | 'input_scale';

/** The kernel families of src/kernels (one WebAssembly kernel each, with a JavaScript reference). */
export type KernelKind = 'fp8' | 'fp8_block' | 'nvfp4' | 'int4';

export interface QuantFormat {
  /** `--format` name. */
  name: string;
  /** `quant_algo` as ModelOpt spells it. */
  quantAlgo: string;
  /** `group_size` written to hf_quant_config.json, if any. */
  groupSize?: number;
  /** AWQ family: `has_zero_point: false, pre_quant_scale: true`, pre_quant_scale tensors and folding. */
  awq: boolean;
  /** Activation scale = input amax / this (needs `<module>.input_amax` statistics); none: 16-bit activations. */
  inputScaleDivisor?: number;
  /** in_features must be a multiple of this, or the linear stays unquantized. */
  kMultiple: number;
  /** out_features must be even (int4 packs pairs of rows). */
  evenRows: boolean;
  /** Fused siblings share input_scale / weight_scale_2 (spec §8.2: everything but per-tensor FP8). */
  unifyGroups: boolean;
  /**
   * NVFP4_AWQ only: a linear's pre_quant_scale is also folded into the rows of the linear before it
   * (o_proj into v_proj, down_proj into up_proj) where the family allows it (spec §8.3).
   */
  foldsIntoPreviousLinear: boolean;
  description: string;

  /** The kernel that computes codes and block scales. */
  kernel: KernelKind;
  /** Chunks hold a multiple of this many rows (128-row bands for 128x128 tiles, row pairs for int4). */
  rowMultiple: number;
  /** Whether the per-tensor weight amax is needed (the format has a per-tensor weight scale). */
  needsWeightAmax: boolean;
  /** Per-tensor scales from the weight amax (after fused siblings share their maximum). */
  tensorScales(amax: number): TensorScales;
  /** The per-tensor scale the kernel divides by: FP8 `weight_scale`, NVFP4 `weight_scale_2`, else 1. */
  kernelScale(s: TensorScales): number;

  /** Tensors streamed chunk by chunk, in state-dict order: `weight`, and per-block `weight_scale`. */
  streamedTensors(module: string, N: number, K: number): TensorShape[];
  /** Scalar tensors after the streamed ones, in state-dict order (F32, 0-d). */
  scalars: readonly ScalarName[];
  /** Byte ranges of the streamed tensors for one chunk of rows. */
  packChunk(module: string, K: number, c: CodesChunk): ChunkWrite[];

  /**
   * `verify`: the stored weight and weight_scale of a quantized module. Returns the problems found
   * and whether `weight_scale` holds per-block scales to check for finite positive values.
   */
  checkStored(module: string, weight: { dtype: DType; shape: readonly number[] }, scale: { dtype: DType; shape: readonly number[] }): {
    failures: string[];
    checkBlockScales: boolean;
  };
  /**
   * `eval` of an export: the f32 weight [N, K] an engine computes with, from the stored `weight`,
   * the raw bytes of `weight_scale`, and `weight_scale_2` where the format has one.
   */
  dequantize(weight: Uint8Array, shape: readonly number[], scale: Uint8Array, scale2: number | undefined): { w: Float32Array; N: number; K: number };
  /** How engines quantize this format's activations with `input_scale`, if at all. */
  activation: 'fp8' | 'nvfp4' | undefined;
  /**
   * AWQ formats: W [N, K] (f32) -> the f32 weight an engine computes with after this format quantizes
   * W with scales taken from W itself (quantize, then dequantize), for the AWQ search's candidates.
   */
  fakeQuantize?: (w: Float32Array, N: number, K: number) => Float32Array;
  /**
   * fakeQuantize writing over w (no copy), for any rows of a weight on their own: `amax` is the whole
   * weight's max |W| (the per-tensor scales come from it); `clip` (default 1) scales the amax the
   * format clips (see awqClip) as AWQ-clip's candidates do.
   */
  fakeQuantizeInPlace?: (w: Float32Array, N: number, K: number, amax: number, clip?: number) => Float32Array;
  /**
   * What ModelOpt's awq_clip clips for this format (spec §11.4): 'blocks', each (row, group) amax
   * (INT4); 'global', the per-tensor amax (NVFP4, whose block scales are dynamic); none where the
   * clip would not survive to the export (W4A8 re-calibrates both weight stages by max afterwards).
   */
  awqClip?: 'blocks' | 'global';

  /**
   * config.json's `quantization_config.config_groups` for this format, as ModelOpt's
   * `convert_hf_quant_config_format` writes it (only FP8 and NVFP4 get one); none: omitted.
   */
  configGroups?: (groupSize: number | undefined) => Record<string, PyValue>;
  /** Fused 3-D expert parameters (Llama 4), where the format defines them (FP8 and NVFP4). */
  fused?: FusedExperts;
  /** The logical [N, K] of a linear from its stored `weight` shape. */
  logicalShape(stored: readonly number[]): [number, number];
  /** Which engines load the format at all. */
  engines: EngineSupport[];
  /** Shape conditions of the engines' loaders that these quantized linears break (none: they load). */
  loadBlockers(linears: readonly LinearShape[]): EngineBlocker[];
}

/** The common case: [N, K] stored as is. */
export const unpackedShape = (s: readonly number[]): [number, number] => [s[0]!, s[1]!];
export const noBlockers = (): EngineBlocker[] => [];

export function f32Scalar(bytes: Uint8Array): number {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getFloat32(0, true);
}

export function f32Array(bytes: Uint8Array): Float32Array {
  const c = bytes.slice();
  return new Float32Array(c.buffer, 0, c.length >> 2);
}

export function bytesOf(a: Float32Array | Uint8Array | Int8Array): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

export function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}
