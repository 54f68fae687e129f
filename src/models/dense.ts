/**
 * The dense decoder that Llama, Qwen2, Qwen3 and Mistral share, as a family factory:
 *   per layer: input_layernorm -> self_attn.{q,k,v}_proj (GQA, RoPE, optional q/k norm and q/k/v bias)
 *              -> o_proj -> residual; post_attention_layernorm -> mlp.{gate,up}_proj -> SwiGLU
 *              -> down_proj -> residual
 *   outside:   model.embed_tokens, model.norm, lm_head (tied to the embedding when absent)
 * A dense family is this factory called with its own model_type, name and fold rule (see llama.ts).
 */
import type { ModelConfig } from '../forward/config.js';
import { decoderLayer, type LinearName, type PreparedLayer } from '../forward/layer.js';
import { loadPreparedLayer, type DenseLayerNames } from '../forward/weights.js';
import { parseModelConfig } from './config.js';
import type { LayerLayout, ModelFamily } from './base.js';

export interface DenseFamilyOptions {
  modelType: string;
  family: string;
  /**
   * ModelOpt folds o_proj's pre_quant_scale into v_proj (without GQA) and down_proj's into up_proj
   * (NVFP4_AWQ) only for the Llama and Qwen3 attention/MLP classes (spec §8.3).
   */
  foldsIntoPreviousLinear: boolean;
  /** config.json parsing, if the family needs more than the shared reader (defaults, nested configs). */
  parseConfig?: ModelFamily['parseConfig'];
}

const ROLES: LinearName[] = ['q', 'k', 'v', 'o', 'gate', 'up', 'down'];

/** Module name of each role in layer `p` ("model.layers.7"). */
function moduleOf(p: string, role: LinearName): string {
  return role === 'q' || role === 'k' || role === 'v' || role === 'o' ? `${p}.self_attn.${role}_proj` : `${p}.mlp.${role}_proj`;
}

/** The dense forward block's weight names for a layer of this layout. */
export function denseLayerNames(layout: LayerLayout): DenseLayerNames {
  const linears = Object.fromEntries(ROLES.map((r) => [r, layout.linears[layout.roles.indexOf(r)]!])) as Record<LinearName, string>;
  return {
    linears,
    inputNorm: `${layout.prefix}.input_layernorm.weight`,
    postNorm: `${layout.prefix}.post_attention_layernorm.weight`,
    qNorm: `${layout.attention}.q_norm.weight`,
    kNorm: `${layout.attention}.k_norm.weight`,
  };
}

export function denseFamily(o: DenseFamilyOptions): ModelFamily {
  return {
    modelType: o.modelType,
    family: o.family,
    parseConfig: o.parseConfig ?? parseModelConfig,
    names: { embed: 'model.embed_tokens', finalNorm: 'model.norm.weight', lmHead: 'lm_head' },
    alwaysExcluded: ['lm_head', 'model.embed_tokens'],
    readsMegatronGpt: true,

    layer(i: number, cfg: ModelConfig): LayerLayout {
      const p = `model.layers.${i}`;
      const [q, k, v, o_, gate, up, down] = ROLES.map((r) => moduleOf(p, r)) as [string, string, string, string, string, string, string];
      const linearFolds: { from: string; into: string }[] = [];
      if (o.foldsIntoPreviousLinear) {
        // only when o_proj's input width equals v_proj's outputs, i.e. no GQA (spec §8.3)
        if (cfg.numHeads === cfg.numKvHeads) linearFolds.push({ from: o_, into: v });
        linearFolds.push({ from: down, into: up });
      }
      return {
        index: i,
        prefix: p,
        linears: [q, k, v, o_, gate, up, down],
        roles: [...ROLES],
        groups: [
          { members: [q, k, v], norm: `${p}.input_layernorm` },
          { members: [gate, up], norm: `${p}.post_attention_layernorm` },
        ],
        attention: `${p}.self_attn`,
        linearFolds,
      };
    },

    linearShape(module: string, cfg: ModelConfig): [number, number] | undefined {
      const h = cfg.hiddenSize;
      switch (module.slice(module.lastIndexOf('.') + 1)) {
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
    },

    forward: {
      load: (src, layout, cfg, gemm) => loadPreparedLayer(src, denseLayerNames(layout), cfg, gemm),
      run: (h, T, layer, cfg, cos, sin, hooks, valid) => decoderLayer(h, T, layer as PreparedLayer, cfg, cos, sin, hooks, valid),
    },
  };
}
