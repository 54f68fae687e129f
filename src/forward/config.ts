/**
 * The decoder a forward block computes: sizes, heads, RoPE and norm settings. Each model family
 * (src/models/) parses its config.json into this.
 */
/** RoPE settings, read from `rope_parameters` (transformers >= 5) or `rope_theta` + `rope_scaling`. */
export interface RopeConfig {
  theta: number;
  type: 'default' | 'llama3' | 'linear';
  factor?: number;
  lowFreqFactor?: number;
  highFreqFactor?: number;
  originalMaxPositionEmbeddings?: number;
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

