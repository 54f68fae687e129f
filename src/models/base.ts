/**
 * A model family (mlx-lm's idea: one small module per family): how its config.json reads, where its
 * weights are named, which linears each layer has and in which roles, which of them share an input
 * (fused groups, with the norm that feeds them), which pre_quant_scale folds it allows, which
 * modules ModelOpt always leaves unquantized, and the forward pass of a layer for calibration and
 * eval. Everything else in rxquant reads the family; adding a family is one file (see dense.ts and
 * llama.ts) plus its line in index.ts.
 */
import type { ModelConfig } from '../forward/config.js';
import type { GemmEngine } from '../forward/gemm.js';
import type { LayerHooks } from '../forward/layer.js';
import type { OuterNames, WeightSource } from '../forward/weights.js';
import type { SampleStates } from '../forward/moe.js';

export interface FusedGroup {
  /** Full module names of the linears that read the same input (q/k/v, gate/up). */
  members: string[];
  /** The norm whose output they read (a pre_quant_scale can be folded into it), if any. */
  norm?: string;
}

export interface LayerLayout {
  index: number;
  /** "model.layers.7" */
  prefix: string;
  /** Full module names of the quantizable linears, in state-dict order. */
  linears: string[];
  /** The role of each linear, parallel to `linears` ("q", "k", "v", "o", "gate", "up", "down"). */
  roles: string[];
  groups: FusedGroup[];
  /** The attention module ("model.layers.7.self_attn"): KV-cache scales hang off it. */
  attention: string;
  /** Pre-quant-scale folds into the previous linear that NVFP4_AWQ does for this family (spec §8.3). */
  linearFolds: { from: string; into: string }[];
  /**
   * Linears whose weight amax is shared in every format, FP8 included (gate and up of one routed
   * expert: ModelOpt's sync_moe_gate_up_amax, spec families.md §1.3).
   */
  sharedWeightScale?: string[][];
  /**
   * Linears whose input amax is shared in every format, and which are quantized all or none (each
   * projection type across the experts of a layer: one input_scale per layer, spec families.md §1.3).
   */
  sharedInputScale?: string[][];
  /** Linears the family's recipe keeps in their 16-bit dtype (listed in exclude_modules), e.g. DeepSeek's MLA projections. */
  keep?: string[];
  /** Each projection across the experts of the layer (all gates, all ups, all downs): AWQ averages their pre_quant_scale (spec §8.4). */
  expertLists?: string[][];
  /** Linear-like modules of the layer that are never quantized and always listed in exclude_modules (routers). */
  excluded?: string[];
  /** Roles the forward block reports for modules outside `linears` (role -> module, e.g. "router"). */
  observed?: Record<string, string>;
  /**
   * Fused 3-D expert parameters quantized whole, without `.weight` (Llama 4's
   * `feed_forward.experts.gate_up_proj` [E, in, out] and `down_proj`): one scale set per tensor.
   */
  fusedExperts?: string[];
}

/** A layer's weights as its family's forward block holds them (opaque outside the family). */
export interface LoadedLayer {
  release(): Promise<void>;
}

/** A layer's forward pass: its weights loaded for a GEMM engine, and the computation h [T, H] -> h' [T, H]. */
export interface LayerForward {
  load(src: WeightSource, layout: LayerLayout, cfg: ModelConfig, gemm: GemmEngine): Promise<LoadedLayer>;
  /**
   * Writes h' over h and returns it; hooks see each linear's input by role (`layout.roles`, or
   * `layout.observed` for modules that are not quantized, such as routers) and the post-RoPE K/V.
   */
  run(h: Float32Array, T: number, layer: LoadedLayer, cfg: ModelConfig, cos: Float32Array, sin: Float32Array, hooks?: LayerHooks, valid?: Uint8Array): Promise<Float32Array>;
  /**
   * The layer over every calibration sample with its weights loaded a part at a time (attention,
   * then groups of experts), for layers too large to hold whole; the same results as load + run on
   * each sample. Families without it are run that way.
   */
  overSamples?(src: WeightSource, layout: LayerLayout, cfg: ModelConfig, gemm: GemmEngine, states: SampleStates, cos: Float32Array, sin: Float32Array, hooks: LayerHooks): Promise<void>;
}

export interface ModelFamily {
  /** config.json's `model_type`. */
  modelType: string;
  /** Human name for messages. */
  family: string;
  /** config.json -> the decoder's settings (defaults, nested configs), validated; errors name `path`. */
  parseConfig(raw: Record<string, unknown>, path: string): ModelConfig;
  /** The tensors outside the decoder layers: embeddings, final norm, output head. */
  names: OuterNames;
  layer(i: number, cfg: ModelConfig): LayerLayout;
  /** Linear-like modules outside the decoder layers that always stay unquantized (lm_head, embeddings). */
  alwaysExcluded: string[];
  /**
   * Tensors under these prefixes (a vision tower) are copied unchanged and their modules listed in
   * exclude_modules (which summarizes them as `vision_model*`).
   */
  untouchedPrefixes?: string[];
  /**
   * Layers stored after the decoder layers and exported unquantized (DeepSeek's multi-token
   * prediction layers, `model.layers.{num_hidden_layers + i}`), listed as `model.layers.{L}*`.
   */
  extraLayers?(cfg: ModelConfig): number[];
  /** Why calibrated KV-cache scales (`--kv-cache fp8`) are refused, if they are (no k_proj/v_proj to hang them on). */
  kvScalesUnsupported?: string;
  /** The export formats the family's recipe defines (default: all). */
  formats?: string[];
  /** Why the AWQ formats are refused for this family, if they are. */
  awqUnsupported?: string;
  /**
   * A Megatron-Core torch_dist checkpoint of this family is read as its HF tensors (models/megatron.ts:
   * the GPT layout with fused qkv and fc1); families without it refuse `--hf-config`.
   */
  readsMegatronGpt?: boolean;
  /** Expected [out, in] shape of a linear's weight, for validation. */

  linearShape(module: string, cfg: ModelConfig): [number, number] | undefined;
  forward: LayerForward;
}

/** The older name of ModelFamily. */
export type Architecture = ModelFamily;
