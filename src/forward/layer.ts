/**
 * One decoder layer of the dense families (Llama, Qwen2, Qwen3, Mistral), as transformers runs it
 * in eager f32 mode. Hooks see every linear's input (calibration statistics) and the post-RoPE keys
 * and values (KV-cache scales).
 */
import type { ModelConfig } from './config.js';
import { rmsnorm, silu } from './ops.js';
import { applyRope } from './rope.js';
import { jsGemm, siluMul, type GemmEngine, type LinearWeights, type PreparedLinear } from './gemm.js';

export type { LinearWeights };
import { ReusedBuffers } from './reused.js';

/** A linear as the forward pass uses it: f32 weight [N, K], optional bias, optional input transform. */

export interface LayerWeights {
  q: LinearWeights;
  k: LinearWeights;
  v: LinearWeights;
  o: LinearWeights;
  gate: LinearWeights;
  up: LinearWeights;
  down: LinearWeights;
  inputNorm: Float32Array;
  postNorm: Float32Array;
  /** Qwen3: RMSNorm over each head of q and k, before RoPE. */
  qNorm?: Float32Array;
  kNorm?: Float32Array;
}

export type LinearName = 'q' | 'k' | 'v' | 'o' | 'gate' | 'up' | 'down';

export interface LayerHooks {
  /**
   * Input of a linear, [T, K], by its role in the layer ("q", "gate", "router", "e3.down", ...);
   * q/k/v share one input (and gate/up), reported once per linear. T may be 0 (an expert no token
   * was routed to).
   */
  linearInput?(role: string, x: Float32Array, T: number, K: number): void;
  /**
   * One input read by several linears (q, k and v; gate and up), reported once for all of them, so
   * a consumer can do its work on it once. Optional: without it, linearInput sees each role; a
   * consumer that has it still gets linearInput for inputs of one linear.
   */
  linearInputs?(roles: readonly string[], x: Float32Array, T: number, K: number): void;
  /** Keys after RoPE [T, kvHeads*d] and values [T, kvHeads*d]. */
  keysValues?(k: Float32Array, v: Float32Array, T: number): void;
}


/** Reports an input several linears read: once through linearInputs when the hooks have it, else once per role. */
export function observeShared(hooks: LayerHooks, roles: readonly string[], x: Float32Array, T: number, K: number): void {
  if (hooks.linearInputs) hooks.linearInputs(roles, x, T, K);
  else for (const r of roles) hooks.linearInput?.(r, x, T, K);
}

/** Linears that read the same input, run as one GEMM when they have no input transform of their own. */
export interface PreparedGroup {
  /** Each member's output; the arrays may be reused by the next run (see PreparedLinear.run). */
  run(x: Float32Array, T: number): Promise<Float32Array[]>;
  /** Fused groups: the members' outputs side by side, [T, sum of widths], without splitting them. */
  runFused?(x: Float32Array, T: number): Promise<Float32Array>;
  /** A gate/up group prepared as SwiGLU (see GemmEngine.prepareSwiGlu): silu(gate) * up [T, I], reused by the next run. */
  runSwiGlu?(x: Float32Array, T: number): Promise<Float32Array>;
  release(): Promise<void>;
}

/** A [n] buffer from the engine's spares when it keeps them (see GemmEngine.takeBuffer). */
const buffer = (gemm: GemmEngine, n: number) => gemm.takeBuffer?.(n) ?? new Float32Array(n);

/**
 * Prepares one GEMM group from loaders of its members (loaded when needed, dropped once used).
 * `dims`: each member's [N, K] as the config gives it, so that the fused matrix [sum of N, K] can be
 * sized first and each member's rows written into it in turn (a lazily loaded member straight from
 * the source), with no other copy. `swiGlu`: the group is [gate, up] of a SwiGLU MLP, prepared as
 * one unit when the engine can (runSwiGlu).
 */
export async function prepareGroupFrom(loads: (() => Promise<LinearWeights>)[], dims: [number, number][], gemm: GemmEngine, opts: { swiGlu?: boolean } = {}): Promise<PreparedGroup> {
  const K = dims[0]![1];
  if (opts.swiGlu && gemm.prepareSwiGlu && loads.length === 2) {
    const gate = await loads[0]!();
    if (!gate.input && !gate.b && gate.K === K) {
      const up = await loads[1]!();
      if (!up.input && !up.b && up.K === K && up.N === gate.N) return swiGluGroup(await gemm.prepareSwiGlu(gate, up));
    }
  }
  if (loads.length > 1 && dims.every((d) => d[1] === K)) {
    const N = dims.reduce((a, d) => a + d[0], 0);
    const w = buffer(gemm, N * K);
    let b: Float32Array | undefined;
    let off = 0;
    let fused = true;
    for (let i = 0; i < loads.length && fused; i++) {
      const m = await loads[i]!();
      if (m.input || m.K !== K || m.N !== dims[i]![0]) {
        fused = false; // activation fake-quant of an exported checkpoint (or an odd shape): one GEMM each
        break;
      }
      const rows = w.subarray(off * K, (off + m.N) * K);
      if (m.writeRows) await m.writeRows(rows);
      else rows.set(m.w);
      if (m.b) (b ??= new Float32Array(N)).set(m.b, off);
      off += m.N;
    }
    if (fused) return splitOutputs(await gemm.prepare({ w, N, K, b }), dims.map((d) => d[0]), gemm);
    gemm.giveBack?.(w);
  }
  // one at a time: each member's [N, K] is dropped once the engine has it
  const each: PreparedLinear[] = [];
  for (const l of loads) each.push(await gemm.prepare(await l()));
  return separate(each);
}

function swiGluGroup(p: import('./gemm.js').PreparedSwiGlu): PreparedGroup {
  return { run: (x, T) => p.run(x, T), runSwiGlu: (x, T) => p.act(x, T), release: () => p.release() };
}

function separate(each: PreparedLinear[]): PreparedGroup {
  return {
    run: (x, T) => Promise.all(each.map((p) => p.run(x, T))),
    release: async () => {
      await Promise.all(each.map((p) => p.release()));
    },
  };
}

/** A fused linear's output [T, sum of widths] split into one [T, width] per member. */
function splitOutputs(fused: PreparedLinear, widths: number[], gemm: GemmEngine): PreparedGroup {
  const N = widths.reduce((a, n) => a + n, 0);
  const outputs = new ReusedBuffers((key) => widths.map((n) => buffer(gemm, Number(key) * n)));
  return {
    run: (x, T) =>
      outputs.use(String(T), async (outs) => {
        const y = await fused.run(x, T); // [T, N]
        for (let t = 0; t < T; t++) {
          let o = 0;
          widths.forEach((n, i) => {
            outs[i]!.set(y.subarray(t * N + o, t * N + o + n), t * n);
            o += n;
          });
        }
        return outs;
      }),
    runFused: (x, T) => fused.run(x, T),
    release: async () => {
      await fused.release();
      gemm.giveBack?.(...(outputs.takeBack() ?? []));
    },
  };
}

/** A layer ready to run: GEMMs prepared (for onnxruntime: Gemm sessions over each group's W [N, K], SwiGLU as one). */
export interface PreparedLayer {
  norms: Pick<LayerWeights, 'inputNorm' | 'postNorm' | 'qNorm' | 'kNorm'>;
  /** The engine's attention, when it has one. */
  engine: GemmEngine;
  qkv: PreparedGroup;
  o: PreparedGroup;
  gateUp: PreparedGroup;
  down: PreparedGroup;
  release(): Promise<void>;
}

export async function prepareLayer(lw: LayerWeights, gemm: GemmEngine = jsGemm): Promise<PreparedLayer> {
  return prepareLayerFrom(async (n) => lw[n], (n) => [lw[n].N, lw[n].K], lw, gemm);
}

/**
 * Prepares a layer loading its linears only as the engine needs them (`load`; `dims` gives each
 * one's [N, K] beforehand). With an engine that keeps its own f32 rows, the largest single linear is
 * prepared first, while nothing else is held, and fused members are written in one at a time:
 * the peak is about the layer's weights once in f32 (~870 MB at 8B), not two or three times.
 */
export async function prepareLayerFrom(
  load: (name: LinearName) => Promise<LinearWeights>,
  dims: (name: LinearName) => [number, number],
  norms: Pick<LayerWeights, 'inputNorm' | 'postNorm' | 'qNorm' | 'kNorm'>,
  gemm: GemmEngine = jsGemm,
): Promise<PreparedLayer> {
  const group = (names: LinearName[], opts?: { swiGlu: boolean }) =>
    prepareGroupFrom(
      names.map((n) => () => load(n)),
      names.map(dims),
      gemm,
      opts,
    );
  const down = await group(['down']);
  const gateUp = await group(['gate', 'up'], { swiGlu: true });
  const qkv = await group(['q', 'k', 'v']);
  const o = await group(['o']);
  return {
    norms,
    engine: gemm,
    qkv,
    o,
    gateUp,
    down,
    release: async () => {
      await Promise.all([qkv.release(), o.release(), gateUp.release(), down.release()]);
    },
  };
}

/** decoderLayer's normed input and MLP activation buffers, kept per engine (see ReusedBuffers). */
const scratchOf = new WeakMap<GemmEngine, ReusedBuffers<{ x: Float32Array; act: Float32Array }>>();

/**
 * h [T, H] -> h' [T, H] for one sequence, written over h (the residual stream is updated in place:
 * at 8B a copy per sample is 8 MB more garbage) and returned. `valid[t] = 0` marks a padding token
 * (its key is masked). cos/sin: [T, headDim] RoPE tables.
 */
export async function decoderLayer(
  h: Float32Array,
  T: number,
  layer: PreparedLayer,
  cfg: ModelConfig,
  cos: Float32Array,
  sin: Float32Array,
  hooks: LayerHooks = {},
  valid?: Uint8Array,
): Promise<Float32Array> {
  let reuse = scratchOf.get(layer.engine);
  if (!reuse) {
    reuse = new ReusedBuffers((key) => {
      const [tokens, hidden, inter] = key.split(',').map(Number) as [number, number, number];
      return { x: new Float32Array(tokens * hidden), act: new Float32Array(tokens * inter) };
    });
    scratchOf.set(layer.engine, reuse);
  }
  return reuse.use(`${T},${cfg.hiddenSize},${cfg.intermediateSize}`, async (scratch) => {
    const H = cfg.hiddenSize;
    const h1 = await attentionBlock(h, T, layer, cfg, cos, sin, hooks, valid, scratch.x);
    // the MLP's normed input reuses the attention's buffer
    const x2 = rmsnorm(h1, T, H, layer.norms.postNorm, cfg.rmsNormEps, scratch.x);
    const dn = await swiGluMlp(x2, T, H, cfg.intermediateSize, layer.gateUp, layer.down, hooks, '', scratch.act);
    for (let i = 0; i < h1.length; i++) h1[i] = h1[i]! + dn[i]!;
    return h1;
  });
}

/** The attention part of a layer (what every family shares), as PreparedLayer and its MoE variant hold it. */
export interface PreparedAttention {
  norms: Pick<LayerWeights, 'inputNorm' | 'qNorm' | 'kNorm'>;
  engine: GemmEngine;
  qkv: PreparedGroup;
  o: PreparedGroup;
}

/**
 * h [T, H] -> h + attention(input_layernorm(h)), written over h: q/k/v (one GEMM group), optional
 * per-head q/k RMSNorm (Qwen3), RoPE, causal GQA, o_proj. `x`: a [T, H] scratch for the normed input.
 */
export async function attentionBlock(
  h: Float32Array,
  T: number,
  layer: PreparedAttention,
  cfg: ModelConfig,
  cos: Float32Array,
  sin: Float32Array,
  hooks: LayerHooks = {},
  valid?: Uint8Array,
  x: Float32Array = new Float32Array(T * cfg.hiddenSize),
): Promise<Float32Array> {
  const lw = layer.norms;
  const H = cfg.hiddenSize, d = cfg.headDim, nH = cfg.numHeads, nKV = cfg.numKvHeads;
  rmsnorm(h, T, H, lw.inputNorm, cfg.rmsNormEps, x); // [T, H]
  observeShared(hooks, ['q', 'k', 'v'], x, T, H);
  const [q, k, v] = (await layer.qkv.run(x, T)) as [Float32Array, Float32Array, Float32Array]; // [T, nH*d], [T, nKV*d] x2
  if (lw.qNorm) rmsnorm(q, T * nH, d, lw.qNorm, cfg.rmsNormEps, q);
  if (lw.kNorm) rmsnorm(k, T * nKV, d, lw.kNorm, cfg.rmsNormEps, k);
  applyRope(q, T, nH, d, cos, sin);
  applyRope(k, T, nKV, d, cos, sin);
  hooks.keysValues?.(k, v, T);
  // [T, nH*d]; the engine's attention when it has one (it has no padding mask)
  const att = layer.engine.attention && !valid ? await (await layer.engine.attention(T, nH, nKV, d))(q, k, v) : attention(q, k, v, T, nH, nKV, d, valid);
  hooks.linearInput?.('o', att, T, nH * d);
  const [o] = (await layer.o.run(att, T)) as [Float32Array]; // [T, H]
  for (let i = 0; i < h.length; i++) h[i] = h[i]! + o[i]!;
  return h;
}

/**
 * SwiGLU MLP: x [T, H] (at least) -> down(silu(gate(x)) * up(x)) [T, H] (the engine's output buffer: copy or
 * consume it before the next run). Hooks see `${prefix}gate`, `${prefix}up`, `${prefix}down`.
 * `act`: a [T, I] scratch for the activation.
 */
export async function swiGluMlp(
  x: Float32Array,
  T: number,
  H: number,
  I: number,
  gateUp: PreparedGroup,
  down: PreparedGroup,
  hooks: LayerHooks = {},
  prefix = '',
  act: Float32Array = new Float32Array(T * I),
): Promise<Float32Array> {
  observeShared(hooks, [`${prefix}gate`, `${prefix}up`], x, T, H);
  if (gateUp.runSwiGlu) {
    act = await gateUp.runSwiGlu(x, T); // [T, I], the engine's buffer
  } else if (gateUp.runFused) {
    const gu = await gateUp.runFused(x, T); // [T, 2I]: gate | up, read in place
    for (let t = 0; t < T; t++) {
      const o = 2 * t * I;
      for (let i = 0; i < I; i++) act[t * I + i] = Math.fround(silu(gu[o + i]!)) * gu[o + I + i]!;
    }
  } else {
    const [g, u] = (await gateUp.run(x, T)) as [Float32Array, Float32Array]; // [T, I] x2
    siluMul(g, u, act.subarray(0, T * I));
  }
  hooks.linearInput?.(`${prefix}down`, act, T, I);
  const [dn] = (await down.run(act, T)) as [Float32Array]; // [T, H]
  return dn;
}

/**
 * Causal grouped-query attention, softmax fused into the loop: one row of scores at a time, only
 * over the keys a query may see (j <= i, not padding). transformers' eager path adds f32-min to the
 * other scores, so they get weight exactly 0; a query that may see no key at all (padding at the
 * start of a sequence) gets a uniform average over all T values, as the all-masked row does there.
 * `chunk` (Llama 4's chunked attention): query i sees only keys j <= i with floor(j/chunk) = floor(i/chunk).
 * q [T, nH*d], k/v [T, nKV*d] -> [T, nH*d]
 */
export function attention(q: Float32Array, k: Float32Array, v: Float32Array, T: number, nH: number, nKV: number, d: number, valid?: Uint8Array, chunk?: number): Float32Array {
  const out = new Float32Array(T * nH * d);
  const scale = 1 / Math.sqrt(d);
  const group = nH / nKV;
  const p = new Float64Array(T);
  const acc = new Float64Array(d);
  // contiguous per-head copies keep the inner loops on unit stride
  const kh = new Float32Array(T * d), vh = new Float32Array(T * d), qh = new Float32Array(T * d);
  for (let g = 0; g < nKV; g++) {
    for (let t = 0; t < T; t++)
      for (let e = 0; e < d; e++) {
        kh[t * d + e] = k[(t * nKV + g) * d + e]!;
        vh[t * d + e] = v[(t * nKV + g) * d + e]!;
      }
    for (let hh = g * group; hh < (g + 1) * group; hh++) {
      for (let t = 0; t < T; t++) for (let e = 0; e < d; e++) qh[t * d + e] = q[(t * nH + hh) * d + e]!;
      for (let i = 0; i < T; i++) {
        const qo = i * d;
        let m = -Infinity;
        const j0 = chunk ? i - (i % chunk) : 0; // the first key this query may see
        for (let j = 0; j < j0; j++) p[j] = -Infinity;
        for (let j = j0; j <= i; j++) {
          if (valid && !valid[j]) {
            p[j] = -Infinity;
            continue;
          }
          const ko = j * d;
          let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
          let e = 0;
          for (; e + 4 <= d; e += 4) {
            s0 += qh[qo + e]! * kh[ko + e]!;
            s1 += qh[qo + e + 1]! * kh[ko + e + 1]!;
            s2 += qh[qo + e + 2]! * kh[ko + e + 2]!;
            s3 += qh[qo + e + 3]! * kh[ko + e + 3]!;
          }
          for (; e < d; e++) s0 += qh[qo + e]! * kh[ko + e]!;
          const s = Math.fround((s0 + s1 + s2 + s3) * scale);
          p[j] = s;
          if (s > m) m = s;
        }
        acc.fill(0);
        const oo = (i * nH + hh) * d;
        if (m === -Infinity) {
          for (let j = 0; j < T; j++) for (let e = 0; e < d; e++) acc[e] = acc[e]! + vh[j * d + e]!;
          for (let e = 0; e < d; e++) out[oo + e] = acc[e]! / T;
          continue;
        }
        let sum = 0;
        for (let j = 0; j <= i; j++) {
          if (p[j] === -Infinity) continue;
          const w = Math.exp(p[j]! - m);
          sum += w;
          const vo = j * d;
          let e = 0;
          for (; e + 4 <= d; e += 4) {
            acc[e] = acc[e]! + w * vh[vo + e]!;
            acc[e + 1] = acc[e + 1]! + w * vh[vo + e + 1]!;
            acc[e + 2] = acc[e + 2]! + w * vh[vo + e + 2]!;
            acc[e + 3] = acc[e + 3]! + w * vh[vo + e + 3]!;
          }
          for (; e < d; e++) acc[e] = acc[e]! + w * vh[vo + e]!;
        }
        for (let e = 0; e < d; e++) out[oo + e] = acc[e]! / sum;
      }
    }
  }
  return out;
}
