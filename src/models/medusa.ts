/**
 * Medusa heads on a base model (spec families.md §7.1), one checkpoint with the base: config.json's
 * `"medusa": {"num_medusa_heads": NH, "num_medusa_layers": L}` and, per head h,
 *   medusa_heads.{h}.{l}.linear  [H, H] + bias [H]   (l < L: ResBlocks, x -> x + silu(linear(x)))
 *   medusa_heads.{h}.{L}         [vocab, H], no bias (the head's vocabulary projection)
 * Every head reads the base model's last hidden state (after the final norm, what lm_head reads), so
 * the first ResBlocks of all heads share one input: a fused group (one weight_scale_2 in NVFP4; FP8
 * keeps a scale each). ModelOpt exports them with the base model through its normal path: every
 * head linear quantized like any linear (FP8: weight, weight_scale, input_scale), none excluded.
 */
import { CheckpointError } from '../errors.js';
import type { GemmEngine, PreparedLinear } from '../forward/gemm.js';
import { observeShared, type LayerHooks } from '../forward/layer.js';
import { silu } from '../forward/ops.js';
import { loadLinearLazily, type WeightSource } from '../forward/weights.js';
import { isFloatWeightDType } from '../safetensors/dtypes.js';
import type { TensorSource } from '../sources/source.js';
import type { LayerLayout } from './base.js';

export interface MedusaConfig {
  numHeads: number;
  /** ResBlocks per head. */
  numLayers: number;
}

/** config.json's `medusa` block, if any, validated. */
export function parseMedusa(raw: Record<string, unknown>, path: string): MedusaConfig | undefined {
  const m = raw.medusa;
  if (m === undefined || m === null) return undefined;
  if (typeof m !== 'object' || Array.isArray(m)) throw new CheckpointError(path, `"medusa" must be an object with num_medusa_heads and num_medusa_layers`);
  const o = m as Record<string, unknown>;
  const int = (key: string, min: number) => {
    const v = o[key];
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min) throw new CheckpointError(path, `"medusa.${key}" must be an integer >= ${min}, got ${JSON.stringify(v)}`);
    return v;
  };
  return { numHeads: int('num_medusa_heads', 1), numLayers: int('num_medusa_layers', 0) };
}

/** Module name of head h's ResBlock l, or (l = numLayers) its vocabulary projection. */
export function medusaModule(h: number, l: number, m: MedusaConfig): string {
  return l < m.numLayers ? `medusa_heads.${h}.${l}.linear` : `medusa_heads.${h}.${l}`;
}

/** Role of a head linear as the heads' forward reports it: "h0.l1", "h2.head". */
const roleOf = (h: number, l: number, m: MedusaConfig) => (l < m.numLayers ? `h${h}.l${l}` : `h${h}.head`);

/**
 * The heads as one layout (index -1: outside the decoder layers): every head linear quantizable, the
 * first ResBlocks (or, with no ResBlocks, the projections) of all heads one group, as they read one
 * input. No attention, norm or folds.
 */
export function medusaLayout(m: MedusaConfig): LayerLayout {
  const linears: string[] = [], roles: string[] = [];
  for (let h = 0; h < m.numHeads; h++) {
    for (let l = 0; l <= m.numLayers; l++) {
      linears.push(medusaModule(h, l, m));
      roles.push(roleOf(h, l, m));
    }
  }
  const first = Array.from({ length: m.numHeads }, (_, h) => medusaModule(h, 0, m));
  return { index: -1, prefix: 'medusa_heads', linears, roles, groups: m.numHeads > 1 ? [{ members: first }] : [], attention: '', linearFolds: [] };
}

/** Checks every head tensor is there with its shape ([H, H] and bias [H] per ResBlock, [vocab, H] per projection). */
export function checkMedusaTensors(tensors: Map<string, TensorSource>, m: MedusaConfig, H: number, vocab: number, dir: string): void {
  const expect = (name: string, shape: number[]) => {
    const t = tensors.get(name);
    if (!t) throw new CheckpointError(dir, `tensor "${name}" is missing (config.json's "medusa" block says ${m.numHeads} heads of ${m.numLayers} ResBlocks)`);
    if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
      throw new CheckpointError(dir, `tensor "${name}" has shape [${t.shape.join(', ')}], expected [${shape.join(', ')}]`);
    }
    if (!isFloatWeightDType(t.dtype)) throw new CheckpointError(dir, `tensor "${name}" has dtype ${t.dtype}; expected BF16, F16 or F32 (already quantized?)`);
  };
  for (let h = 0; h < m.numHeads; h++) {
    for (let l = 0; l < m.numLayers; l++) {
      expect(`${medusaModule(h, l, m)}.weight`, [H, H]);
      expect(`${medusaModule(h, l, m)}.bias`, [H]);
    }
    expect(`${medusaModule(h, m.numLayers, m)}.weight`, [vocab, H]);
  }
  const extra = [...tensors.keys()].find((n) => {
    const r = /^medusa_heads\.(\d+)\.(\d+)\./.exec(n);
    return r && (Number(r[1]) >= m.numHeads || Number(r[2]) > m.numLayers);
  });
  if (extra) throw new CheckpointError(dir, `tensor "${extra}" is beyond config.json's "medusa" block (${m.numHeads} heads of ${m.numLayers} ResBlocks)`);
}

/** The heads' ResBlocks prepared on an engine (the projections are not run: calibration needs only their inputs). */
export interface PreparedMedusa {
  /**
   * x [T, H]: the base model's last hidden state after the final norm. Reports every head linear's
   * input to the hooks (the first ResBlocks' shared input once), running each head's ResBlocks
   * x <- x + silu(x W^T + b) in f32 as torch does (the SiLU rounded to f32, then the sum).
   */
  run(x: Float32Array, T: number, hooks: LayerHooks): Promise<void>;
  release(): Promise<void>;
}

export async function loadMedusa(src: WeightSource, m: MedusaConfig, H: number, gemm: GemmEngine): Promise<PreparedMedusa> {
  const blocks: PreparedLinear[][] = [];
  try {
    for (let h = 0; h < m.numHeads; h++) {
      const head: PreparedLinear[] = [];
      blocks.push(head);
      for (let l = 0; l < m.numLayers; l++) head.push(await gemm.prepare(await loadLinearLazily(src, medusaModule(h, l, m))));
    }
  } catch (e) {
    await Promise.all(blocks.flat().map((p) => p.release()));
    throw e;
  }
  return {
    async run(x, T, hooks) {
      // the first linear of every head reads x itself
      observeShared(hooks, Array.from({ length: m.numHeads }, (_, h) => roleOf(h, 0, m)), x, T, H);
      for (let h = 0; h < m.numHeads; h++) {
        let cur = x;
        for (let l = 0; l < m.numLayers; l++) {
          if (l > 0) hooks.linearInput?.(roleOf(h, l, m), cur, T, H);
          const y = await blocks[h]![l]!.run(cur, T); // [T, H], the engine's buffer
          const next = new Float32Array(T * H);
          for (let i = 0; i < T * H; i++) next[i] = cur[i]! + Math.fround(silu(y[i]!));
          cur = next;
        }
        if (m.numLayers > 0) hooks.linearInput?.(roleOf(h, m.numLayers, m), cur, T, H);
      }
    },
    release: async () => {
      await Promise.all(blocks.flat().map((p) => p.release()));
    },
  };
}
