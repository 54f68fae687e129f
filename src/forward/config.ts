/**
 * The decoder a forward block computes: sizes, heads, RoPE and norm settings. Each model family
 * (src/models/) parses its config.json into this.
 */
/** RoPE settings, read from `rope_parameters` (transformers >= 5) or `rope_theta` + `rope_scaling`. */
export interface RopeConfig {
  theta: number;
  type: 'default' | 'llama3' | 'linear' | 'yarn';
  factor?: number;
  lowFreqFactor?: number;
  highFreqFactor?: number;
  originalMaxPositionEmbeddings?: number;
  /** YaRN: the ramp's bounds in rotations (default 32 and 1), whether they are rounded outward (default true). */
  betaFast?: number;
  betaSlow?: number;
  truncate?: boolean;
  /** YaRN: cos and sin are multiplied by this. */
  attentionFactor?: number;
}

/** The fields of config.json that rxquant uses, validated. */
export interface ModelConfig {
  modelType: string;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  vocabSize: number;
  rmsNormEps: number;
  rope: RopeConfig;
  tieWordEmbeddings: boolean;
  attentionBias: boolean;
  /** torch dtype named by the config ("bfloat16", "float32", ...), if any. */
  torchDtype: string | undefined;
  bosTokenId: number | undefined;
  /** Mixture-of-experts routing, for the MoE families. */
  moe?: MoeConfig;
  /** Llama 4's attention and MoE settings. */
  llama4?: Llama4Config;
  /** DeepSeek V3's MLA and MoE settings. */
  deepseek?: DeepseekConfig;
}

/** Routing settings of an MoE family's config.json. */
export interface MoeConfig {
  numExperts: number;
  /** Experts per token. */
  topK: number;
  /** Divide the top-k probabilities by their sum (Mixtral always; Qwen3-MoE `norm_topk_prob`). */
  normTopKProb: boolean;
  /** Each expert's intermediate size. */
  expertIntermediateSize: number;
  /** Per layer: true where the MLP is the sparse MoE block (false: a dense MLP). */
  sparseLayers: boolean[];
}


/** Llama 4's settings beyond the shared decoder ones. */
export interface Llama4Config {
  /** Per layer: RoPE (and qk norm, chunked attention) or NoPE. */
  rope: boolean[];
  /** Per layer: the chunk of chunked attention, or none (full causal attention). */
  chunk: (number | undefined)[];
  qkNorm: boolean;
  /** NoPE layers' query scaling, when attn_temperature_tuning. */
  temperature?: { floorScale: number; attnScale: number };
  /** Per layer: the MoE block (else the dense MLP). */
  moe: boolean[];
  numExperts: number;
  topK: number;
  /** Each expert's and the shared expert's intermediate size. */
  expertIntermediateSize: number;
  /** The dense layers' MLP size (intermediate_size_mlp). */
  denseIntermediateSize: number;
}


/** DeepSeek V3 / R1's MLA and MoE settings. */
export interface DeepseekConfig {
  /** q_lora_rank, or null: a plain q_proj. */
  qLoraRank: number | null;
  kvLoraRank: number;
  qkNopeHeadDim: number;
  qkRopeHeadDim: number;
  vHeadDim: number;
  ropeInterleave: boolean;
  /** Softmax scale: (nope + rope)^-0.5 (times mscale^2 under YaRN with mscale_all_dim). */
  attentionScale: number;
  /** Layers before this one have a dense MLP. */
  firstKDenseReplace: number;
  nRoutedExperts: number;
  nSharedExperts: number;
  moeIntermediateSize: number;
  topK: number;
  nGroup: number;
  topkGroup: number;
  normTopKProb: boolean;
  routedScalingFactor: number;
  /** Multi-token-prediction layers stored after the decoder layers (model.layers.{num_hidden_layers + i}). */
  numNextnPredictLayers: number;
}
