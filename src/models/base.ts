/**
 * What rxquant needs to know about an architecture: where its decoder layers are, which linears
 * each has, which of them share an input (fused groups, with the norm that feeds them), and which
 * modules ModelOpt leaves unquantized. One small file per family builds on `DenseDecoder`.
 */
import type { ModelConfig } from './config.js';

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
  groups: FusedGroup[];
  /** The attention module ("model.layers.7.self_attn"): KV-cache scales hang off it. */
  attention: string;
  /** Pre-quant-scale folds into the previous linear that NVFP4_AWQ does for this family (spec §8.3). */
  linearFolds: { from: string; into: string }[];
}

export interface Architecture {
  modelType: string;
  /** Human name for messages. */
  family: string;
  layer(i: number, cfg: ModelConfig): LayerLayout;
  /** Linear-like modules outside the decoder layers that always stay unquantized (lm_head, embeddings). */
  alwaysExcluded: string[];
  /** Expected [out, in] shape of a linear's weight, for validation. */
  linearShape(module: string, cfg: ModelConfig): [number, number] | undefined;
}

/** Llama-style decoder: self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj, input/post-attention RMSNorm. */
export class DenseDecoder implements Architecture {
  constructor(
    readonly modelType: string,
    readonly family: string,
    /** ModelOpt folds o_proj->v_proj and down_proj->up_proj only for Llama and Qwen3 attention/MLP classes. */
    private readonly foldsIntoPreviousLinear: boolean,
  ) {}

  readonly alwaysExcluded = ['lm_head', 'model.embed_tokens'];

  layer(i: number, cfg: ModelConfig): LayerLayout {
    const p = `model.layers.${i}`;
    const a = `${p}.self_attn`;
    const m = `${p}.mlp`;
    const q = `${a}.q_proj`, k = `${a}.k_proj`, v = `${a}.v_proj`, o = `${a}.o_proj`;
    const gate = `${m}.gate_proj`, up = `${m}.up_proj`, down = `${m}.down_proj`;
    const linearFolds: { from: string; into: string }[] = [];
    if (this.foldsIntoPreviousLinear) {
      // only when o_proj's input width equals v_proj's outputs, i.e. no GQA (spec §8.3)
      if (cfg.numHeads === cfg.numKvHeads) linearFolds.push({ from: o, into: v });
      linearFolds.push({ from: down, into: up });
    }
    return {
      index: i,
      prefix: p,
      linears: [q, k, v, o, gate, up, down],
      groups: [
        { members: [q, k, v], norm: `${p}.input_layernorm` },
        { members: [gate, up], norm: `${p}.post_attention_layernorm` },
      ],
      attention: a,
      linearFolds,
    };
  }

  linearShape(module: string, cfg: ModelConfig): [number, number] | undefined {
    const h = cfg.hiddenSize;
    const name = module.slice(module.lastIndexOf('.') + 1);
    switch (name) {
      case 'q_proj':
        return [cfg.numHeads * cfg.headDim, h];
      case 'k_proj':
      case 'v_proj':
        return [cfg.numKvHeads * cfg.headDim, h];
      case 'o_proj':
        return [h, cfg.numHeads * cfg.headDim];
      case 'gate_proj':
      case 'up_proj':
        return [cfg.intermediateSize, h];
      case 'down_proj':
        return [h, cfg.intermediateSize];
      default:
        return undefined;
    }
  }
}
