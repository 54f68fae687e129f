/**
 * Mixture-of-experts decoders with one 2-D linear per expert on disk (Mixtral, Qwen3-MoE), as a
 * family factory:
 *   per layer: the dense attention (input_layernorm, self_attn.{q,k,v,o}_proj, optional q/k norm),
 *              post_attention_layernorm, then either the sparse block
 *                <block>.gate [E, H]                       the router: never quantized, always excluded
 *                <block>.experts.{e}.{gate|up|down leaf}   one SwiGLU MLP per expert
 *              or, on layers off the MoE schedule, the dense mlp.{gate,up,down}_proj
 *   outside:   model.embed_tokens, model.norm, lm_head
 * Scale sharing (spec families.md §1.3): gate and up of one expert share their weight scale in
 * every format, FP8 included; each projection type shares one input_scale across the experts of a
 * layer. The names written are the hub names (§1.2: never the fused in-memory layout).
 */
import type { ModelConfig, MoeConfig } from '../forward/config.js';
import { loadPreparedMoeLayer, moeDecoderLayer, moeLayerOverSamples, type MoeLayerNames, type PreparedMoeLayer } from '../forward/moe.js';
import { CheckpointError } from '../errors.js';
import { parseModelConfig } from './config.js';
import type { FusedGroup, LayerLayout, ModelFamily } from './base.js';

export interface MoeFamilyOptions {
  modelType: string;
  family: string;
  /** The sparse block's module under the layer ("block_sparse_moe" for Mixtral, "mlp" for Qwen3-MoE). */
  block: string;
  /** The expert's linear leaves: gate, up, down ("w1", "w3", "w2" for Mixtral). */
  leaves: { gate: string; up: string; down: string };
  /** Routing settings from config.json (raw), with the shared decoder settings already parsed. */
  parseMoe(raw: Record<string, unknown>, base: ModelConfig, path: string): MoeConfig;
}

/** A positive integer field of config.json, under one of its names (the first present wins). */
export function intField(raw: Record<string, unknown>, keys: string[], path: string, fallback?: number): number {
  const key = keys.find((k) => raw[k] != null);
  const v = key ? raw[key] : fallback;
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0) {
    throw new CheckpointError(path, `"${keys[0]}" must be a positive integer, got ${JSON.stringify(key ? raw[key] : undefined)}`);
  }
  return v;
}

/**
 * The routed experts `${prefix}.{e}.{leaf}` of a layer as a layout fragment: roles `e{e}.gate|up|down`;
 * each expert's gate and up one fused group (one GEMM in the engines, no norm of their own to fold
 * into) sharing their weight scale; gates and ups of all experts one input scale, downs another;
 * each projection across the experts one list for AWQ's averaging (spec families.md §1.3, §8.4).
 */
export function expertLayout(prefix: string, leaves: { gate: string; up: string; down: string }, E: number): Pick<LayerLayout, 'linears' | 'roles' | 'groups'> & Required<Pick<LayerLayout, 'sharedWeightScale' | 'sharedInputScale' | 'expertLists'>> {
  const linears: string[] = [], roles: string[] = [], groups: FusedGroup[] = [], sharedWeightScale: string[][] = [];
  const gateUps: string[] = [], downs: string[] = [];
  const lists: string[][] = [[], [], []];
  for (let e = 0; e < E; e++) {
    const x = `${prefix}.${e}`;
    const [g, u, d] = [`${x}.${leaves.gate}`, `${x}.${leaves.up}`, `${x}.${leaves.down}`];
    linears.push(g, u, d);
    roles.push(`e${e}.gate`, `e${e}.up`, `e${e}.down`);
    groups.push({ members: [g, u] });
    sharedWeightScale.push([g, u]);
    gateUps.push(g, u);
    downs.push(d);
    lists[0]!.push(g);
    lists[1]!.push(u);
    lists[2]!.push(d);
  }
  return { linears, roles, groups, sharedWeightScale, sharedInputScale: [gateUps, downs], expertLists: lists };
}

export function moeFamily(o: MoeFamilyOptions): ModelFamily {
  const moeOf = (cfg: ModelConfig): MoeConfig => {
    if (!cfg.moe) throw new Error(`${o.family}: config has no MoE settings`);
    return cfg.moe;
  };

  const layer = (i: number, cfg: ModelConfig): LayerLayout => {
    const p = `model.layers.${i}`;
    const a = `${p}.self_attn`;
    const [q, k, v, out] = ['q', 'k', 'v', 'o'].map((r) => `${a}.${r}_proj`) as [string, string, string, string];
    const linears = [q, k, v, out];
    const roles = ['q', 'k', 'v', 'o'];
    const groups: FusedGroup[] = [{ members: [q, k, v], norm: `${p}.input_layernorm` }];
    const moe = moeOf(cfg);
    if (!moe.sparseLayers[i]) {
      const m = `${p}.mlp`;
      const [g, u, d] = [`${m}.gate_proj`, `${m}.up_proj`, `${m}.down_proj`];
      linears.push(g, u, d);
      roles.push('gate', 'up', 'down');
      groups.push({ members: [g, u], norm: `${p}.post_attention_layernorm` });
      return { index: i, prefix: p, linears, roles, groups, attention: a, linearFolds: [] };
    }
    const b = `${p}.${o.block}`;
    const ex = expertLayout(`${b}.experts`, o.leaves, moe.numExperts);
    const router = `${b}.gate`;
    return {
      index: i,
      prefix: p,
      linears: [...linears, ...ex.linears],
      roles: [...roles, ...ex.roles],
      groups: [...groups, ...ex.groups],
      attention: a,
      linearFolds: [],
      sharedWeightScale: ex.sharedWeightScale,
      sharedInputScale: ex.sharedInputScale,
      expertLists: ex.expertLists,
      excluded: [router],
      observed: { router },
    };
  };

  const names = (layout: LayerLayout): MoeLayerNames => {
    const role = (r: string) => layout.linears[layout.roles.indexOf(r)]!;
    const p = layout.prefix;
    const base = {
      q: role('q'),
      k: role('k'),
      v: role('v'),
      o: role('o'),
      inputNorm: `${p}.input_layernorm.weight`,
      postNorm: `${p}.post_attention_layernorm.weight`,
      qNorm: `${layout.attention}.q_norm.weight`,
      kNorm: `${layout.attention}.k_norm.weight`,
    };
    if (!layout.observed?.router) return { ...base, mlp: { kind: 'dense', gate: role('gate'), up: role('up'), down: role('down') } };
    const experts: { gate: string; up: string; down: string }[] = [];
    for (let e = 0; layout.roles.includes(`e${e}.gate`); e++) experts.push({ gate: role(`e${e}.gate`), up: role(`e${e}.up`), down: role(`e${e}.down`) });
    return { ...base, mlp: { kind: 'moe', router: layout.observed.router, experts } };
  };

  return {
    modelType: o.modelType,
    family: o.family,
    parseConfig: (raw, path) => {
      const base = parseModelConfig(raw, path);
      return { ...base, moe: o.parseMoe(raw, base, path) };
    },
    names: { embed: 'model.embed_tokens', finalNorm: 'model.norm.weight', lmHead: 'lm_head' },
    alwaysExcluded: ['lm_head', 'model.embed_tokens'],
    layer,
    linearShape(module: string, cfg: ModelConfig): [number, number] | undefined {
      const h = cfg.hiddenSize;
      const leaf = module.slice(module.lastIndexOf('.') + 1);
      const expert = module.includes('.experts.');
      const I = expert ? moeOf(cfg).expertIntermediateSize : cfg.intermediateSize;
      if (leaf === 'q_proj') return [cfg.numHeads * cfg.headDim, h];
      if (leaf === 'k_proj' || leaf === 'v_proj') return [cfg.numKvHeads * cfg.headDim, h];
      if (leaf === 'o_proj') return [h, cfg.numHeads * cfg.headDim];
      if (expert ? leaf === o.leaves.gate || leaf === o.leaves.up : leaf === 'gate_proj' || leaf === 'up_proj') return [I, h];
      if (expert ? leaf === o.leaves.down : leaf === 'down_proj') return [h, I];
      return undefined;
    },
    forward: {
      load: (src, layout, cfg, gemm) => loadPreparedMoeLayer(src, names(layout), cfg, moeOf(cfg), gemm),
      run: (h, T, l, cfg, cos, sin, hooks, valid) => moeDecoderLayer(h, T, l as PreparedMoeLayer, cfg, moeOf(cfg), cos, sin, hooks, valid),
      async overSamples(src, layout, cfg, gemm, states, cos, sin, hooks) {
        const n = names(layout);
        if (n.mlp.kind === 'moe') return moeLayerOverSamples(src, n, cfg, moeOf(cfg), gemm, states, cos, sin, hooks);
        const l = await loadPreparedMoeLayer(src, n, cfg, moeOf(cfg), gemm);
        try {
          for (let i = 0; i < states.count; i++) await states.set(i, await moeDecoderLayer(await states.get(i), states.tokens(i), l, cfg, moeOf(cfg), cos, sin, hooks));
        } finally {
          await l.release();
        }
      },
    },
  };
}
