import { CheckpointError } from '../errors.js';
import type { ModelConfig, RopeConfig } from '../forward/config.js';

export type { ModelConfig, RopeConfig };

export function parseModelConfig(raw: Record<string, unknown>, path: string): ModelConfig {
  const int = (key: string, fallback?: number): number => {
    const v = raw[key] ?? fallback;
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0) {
      throw new CheckpointError(path, `"${key}" must be a positive integer, got ${JSON.stringify(raw[key])}`);
    }
    return v;
  };
  const hiddenSize = int('hidden_size');
  const numHeads = int('num_attention_heads');
  const numKvHeads = int('num_key_value_heads', numHeads);
  if (numHeads % numKvHeads !== 0) {
    throw new CheckpointError(path, `num_attention_heads (${numHeads}) is not a multiple of num_key_value_heads (${numKvHeads})`);
  }
  const headDim = raw.head_dim == null ? hiddenSize / numHeads : int('head_dim');
  if (!Number.isInteger(headDim)) throw new CheckpointError(path, `hidden_size ${hiddenSize} is not divisible by ${numHeads} heads and no head_dim is given`);
  const eps = raw.rms_norm_eps ?? 1e-6;
  if (typeof eps !== 'number' || !(eps > 0)) throw new CheckpointError(path, `"rms_norm_eps" must be a positive number`);
  const dtype = raw.torch_dtype ?? raw.dtype;
  return {
    modelType: String(raw.model_type),
    hiddenSize,
    intermediateSize: int('intermediate_size'),
    numLayers: int('num_hidden_layers'),
    numHeads,
    numKvHeads,
    headDim,
    vocabSize: int('vocab_size'),
    rmsNormEps: eps,
    rope: parseRope(raw, path),
    tieWordEmbeddings: raw.tie_word_embeddings === true,
    attentionBias: raw.attention_bias === true,
    torchDtype: typeof dtype === 'string' ? dtype : undefined,
    bosTokenId: typeof raw.bos_token_id === 'number' ? raw.bos_token_id : undefined,
  };
}

function parseRope(raw: Record<string, unknown>, path: string): RopeConfig {
  const params = (raw.rope_parameters ?? raw.rope_scaling ?? null) as Record<string, unknown> | null;
  const theta = Number(params?.rope_theta ?? raw.rope_theta ?? 10000);
  if (!(theta > 0)) throw new CheckpointError(path, `rope_theta must be positive`);
  const type = String(params?.rope_type ?? params?.type ?? 'default');
  if (type === 'default') return { theta, type };
  if (type === 'linear') return { theta, type, factor: Number(params!.factor) };
  if (type === 'yarn') {
    // transformers' _compute_yarn_parameters: with original_max_position_embeddings the factor is
    // max_position_embeddings / original; the attention factor from mscale / mscale_all_dim
    const p = params!;
    const maxPos = Number(raw.max_position_embeddings);
    const original = p.original_max_position_embeddings == null ? undefined : Number(p.original_max_position_embeddings);
    const factor = original !== undefined && maxPos > 0 ? maxPos / original : Number(p.factor);
    if (!(factor > 0)) throw new CheckpointError(path, 'yarn rope scaling needs a positive "factor"');
    const getMscale = (scale: number, m = 1) => (scale <= 1 ? 1 : 0.1 * m * Math.log(scale) + 1);
    const mscale = Number(p.mscale ?? 0), mscaleAll = Number(p.mscale_all_dim ?? 0);
    const attentionFactor = p.attention_factor != null ? Number(p.attention_factor) : mscale && mscaleAll ? getMscale(factor, mscale) / getMscale(factor, mscaleAll) : getMscale(factor);
    return {
      theta,
      type,
      factor,
      originalMaxPositionEmbeddings: original ?? maxPos,
      betaFast: Number(p.beta_fast ?? 0) || 32,
      betaSlow: Number(p.beta_slow ?? 0) || 1,
      truncate: p.truncate !== false,
      attentionFactor,
    };
  }
  if (type === 'llama3') {
    const f = (k: string) => {
      const v = Number(params![k]);
      if (!(v > 0)) throw new CheckpointError(path, `llama3 rope scaling needs a positive "${k}"`);
      return v;
    };
    return {
      theta,
      type,
      factor: f('factor'),
      lowFreqFactor: f('low_freq_factor'),
      highFreqFactor: f('high_freq_factor'),
      originalMaxPositionEmbeddings: f('original_max_position_embeddings'),
    };
  }
  throw new CheckpointError(path, `rope type "${type}" is not supported (supported: default, linear, llama3, yarn)`);
}
