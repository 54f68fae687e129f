/**
 * Loads the f32 weights of a layer for the forward pass, from a source checkpoint or from an
 * export. For an export, weights are dequantized and each linear's input goes through what the
 * engines do at run time: pre_quant_scale, then activation quantization with input_scale
 * (FP8 per tensor; NVFP4 per 16-element block under the global input_scale).
 */
import type { TensorSource } from '../sources/source.js';
import type { ModelConfig } from './config.js';
import { CheckpointError } from '../errors.js';
import { decodeToFloat32 } from '../codecs/float.js';
import { E4M3_VALUES, e4m3Encode } from '../codecs/e4m3.js';
import { e2m1Encode, E2M1_VALUES } from '../codecs/e2m1.js';
import { formatByQuantAlgo } from '../formats/registry.js';
import type { QuantFormat } from '../formats/format.js';
import { prepareGroupFrom, prepareLayerFrom, type LayerWeights, type LinearName, type LinearWeights, type PreparedGroup, type PreparedLayer } from './layer.js';
import { bf16RowsInto, type GemmEngine } from './gemm.js';

export interface WeightSource {
  tensors: Map<string, TensorSource>;
  dir: string;
  /** quant_algo of an export, undefined for a source checkpoint. */
  quantAlgo?: string;
}

export function weightSource(ck: { tensors: Map<string, TensorSource>; dir: string }, quantAlgo?: string): WeightSource {
  return { tensors: ck.tensors, dir: ck.dir, quantAlgo };
}

/** A tensor of the source decoded to f32 (norms, biases, router weights); a clear error when it is missing. */
export async function f32(src: WeightSource, name: string): Promise<Float32Array> {
  const t = src.tensors.get(name);
  if (!t) throw new CheckpointError(src.dir, `tensor "${name}" is missing`);
  return decodeToFloat32(await t.read(), t.dtype, name);
}

async function scalar(src: WeightSource, name: string): Promise<number> {
  return (await f32(src, name))[0]!;
}

/** Fake-quantizes activations to FP8 with a per-tensor scale: e4m3(x / s) * s. */
export function fp8ActQuant(scale: number): (x: Float32Array) => Float32Array {
  return (x) => {
    const out = new Float32Array(x.length);
    for (let i = 0; i < x.length; i++) out[i] = Math.fround(E4M3_VALUES[e4m3Encode(Math.fround(x[i]! / scale))]! * scale);
    return out;
  };
}

/** NVFP4 activations: per 16 values along K, scale = e4m3(blockAmax / (6 * s)), x_q = e2m1(x / (scale * s)). */
export function nvfp4ActQuant(s: number): (x: Float32Array) => Float32Array {
  return (x) => {
    const out = new Float32Array(x.length);
    for (let b = 0; b < x.length; b += 16) {
      let m = 0;
      for (let i = b; i < b + 16; i++) m = Math.max(m, Math.abs(x[i]!));
      const bs = E4M3_VALUES[e4m3Encode(Math.min(448, Math.fround(m / Math.fround(6 * s))))]!;
      const div = Math.fround(bs * s);
      if (div === 0) continue;
      for (let i = b; i < b + 16; i++) out[i] = Math.fround(E2M1_VALUES[e2m1Encode(Math.fround(x[i]! / div))]! * div);
    }
    return out;
  };
}

/** What engines do to a linear's input under `fmt` with `input_scale` s (FP8 or NVFP4 fake quantization); none without s or for 16-bit activations. */
export function activationQuant(fmt: Pick<QuantFormat, 'activation'>, s: number | undefined): ((x: Float32Array) => Float32Array) | undefined {
  if (s === undefined) return undefined;
  return fmt.activation === 'nvfp4' ? nvfp4ActQuant(s) : fmt.activation === 'fp8' ? fp8ActQuant(s) : undefined;
}

function withPreQuantScale(pqs: Float32Array | undefined, next?: (x: Float32Array) => Float32Array): ((x: Float32Array) => Float32Array) | undefined {
  if (!pqs) return next;
  return (x) => {
    const K = pqs.length;
    const y = new Float32Array(x.length);
    for (let i = 0; i < x.length; i++) y[i] = Math.fround(x[i]! * pqs[i % K]!);
    return next ? next(y) : y;
  };
}

/** One linear's weights: plain, or dequantized from the export's format. */
export async function loadLinear(src: WeightSource, module: string): Promise<LinearWeights> {
  const wt = src.tensors.get(`${module}.weight`);
  if (!wt) throw new CheckpointError(src.dir, `tensor "${module}.weight" is missing`);
  const bias = src.tensors.has(`${module}.bias`) ? await f32(src, `${module}.bias`) : undefined;
  const quantized = src.tensors.has(`${module}.weight_scale`);
  if (!quantized) {
    const [N, K] = wt.shape as [number, number];
    return { w: decodeToFloat32(await wt.read(), wt.dtype, wt.name), N, K, b: bias };
  }
  const fmt = formatByQuantAlgo(src.quantAlgo);
  if (!fmt) throw new CheckpointError(src.dir, `cannot run quant_algo ${JSON.stringify(src.quantAlgo)} (module ${module})`);
  const raw = await wt.read();
  const pqs = src.tensors.has(`${module}.pre_quant_scale`) ? await f32(src, `${module}.pre_quant_scale`) : undefined;
  const inputScale = src.tensors.has(`${module}.input_scale`) ? await scalar(src, `${module}.input_scale`) : undefined;
  const scale2 = src.tensors.has(`${module}.weight_scale_2`) ? await scalar(src, `${module}.weight_scale_2`) : undefined;
  const { w, N, K } = fmt.dequantize(raw, wt.shape, await src.tensors.get(`${module}.weight_scale`)!.read(), scale2);
  const act = activationQuant(fmt, inputScale);
  return { w, N, K, b: bias, input: withPreQuantScale(pqs, act) };
}

/**
 * Where a dense decoder layer's weights are, by checkpoint name (the model family decides):
 * the seven linears' module names and the norms' weight tensors (q/k norms where the family has them).
 */
export interface DenseLayerNames {
  linears: Record<LinearName, string>;
  inputNorm: string;
  postNorm: string;
  /** Loaded when the checkpoint has them (Qwen3). */
  qNorm?: string;
  kNorm?: string;
}

const LINEAR_NAMES: LinearName[] = ['q', 'k', 'v', 'o', 'gate', 'up', 'down'];

export async function loadLayerWeights(src: WeightSource, names: DenseLayerNames): Promise<LayerWeights> {
  const [q, k, v, o, gate, up, down] = await Promise.all(LINEAR_NAMES.map((n) => loadLinear(src, names.linears[n])));
  return { q: q!, k: k!, v: v!, o: o!, gate: gate!, up: up!, down: down!, ...(await loadNorms(src, names)) };
}

/** A layer's norms in f32 (q_norm and k_norm where the architecture has them, Qwen3). */
async function loadNorms(src: WeightSource, names: DenseLayerNames): Promise<Pick<LayerWeights, 'inputNorm' | 'postNorm' | 'qNorm' | 'kNorm'>> {
  const optional = async (name: string | undefined) => (name !== undefined && src.tensors.has(name) ? f32(src, name) : undefined);
  return {
    inputNorm: await f32(src, names.inputNorm),
    postNorm: await f32(src, names.postNorm),
    qNorm: await optional(names.qNorm),
    kNorm: await optional(names.kNorm),
  };
}

/**
 * An unquantized linear whose rows are written as f32 where the engine asks (writeRows), 4 MiB of
 * source rows at a time; a quantized one is dequantized whole (loadLinear).
 */
export async function loadLinearLazily(src: WeightSource, module: string): Promise<LinearWeights> {
  const t = src.tensors.get(`${module}.weight`);
  if (!t || src.tensors.has(`${module}.weight_scale`) || t.shape.length !== 2) return loadLinear(src, module);
  const [N, K] = t.shape as [number, number];
  const b = src.tensors.has(`${module}.bias`) ? await f32(src, `${module}.bias`) : undefined;
  return {
    w: new Float32Array(0),
    N,
    K,
    b,
    async writeRows(into) {
      const rows = Math.max(1, Math.floor((4 * 2 ** 20) / t.rowBytes));
      const raw = new Uint8Array(rows * t.rowBytes);
      for (let r0 = 0; r0 < N; r0 += rows) {
        const r1 = Math.min(N, r0 + rows);
        const bytes = await t.readRows(r0, r1, raw); // the start of raw
        const dst = into.subarray(r0 * K, r1 * K);
        if (t.dtype === 'BF16') bf16RowsInto(dst, new Uint16Array(bytes.buffer, bytes.byteOffset, bytes.length / 2));
        else dst.set(decodeToFloat32(bytes, t.dtype, t.name));
      }
    },
  };
}

/**
 * A layer prepared for the forward pass, its linears loaded one GEMM group at a time (see
 * prepareLayerFrom): with onnxruntime, a layer costs its weights once in f32, not three times.
 */
export async function loadPreparedLayer(src: WeightSource, names: DenseLayerNames, cfg: ModelConfig, gemm: GemmEngine): Promise<PreparedLayer> {
  const norms = await loadNorms(src, names);
  // [N, K] from the config, for sizing fused matrices before loading (a mismatch falls back to one GEMM each)
  const H = cfg.hiddenSize, I = cfg.intermediateSize, q = cfg.numHeads * cfg.headDim, kv = cfg.numKvHeads * cfg.headDim;
  const dims: Record<LinearName, [number, number]> = { q: [q, H], k: [kv, H], v: [kv, H], o: [H, q], gate: [I, H], up: [I, H], down: [H, I] };
  const load = (n: LinearName) => {
    const m = names.linears[n];
    return loadLinearLazily(src, m);
  };
  return prepareLayerFrom(load, (n) => dims[n], norms, gemm);
}

/** Where the tensors outside the decoder layers are, by checkpoint name (the model family decides). */
export interface OuterNames {
  /** The embedding module ("model.embed_tokens"); its `.weight` is [vocab, H]. */
  embed: string;
  /** The final norm's weight tensor ("model.norm.weight"). */
  finalNorm: string;
  /** The output head module ("lm_head"); the embedding when the checkpoint has none (tied). */
  lmHead: string;
}

/** Embedding rows for token ids [T] -> [T, H]; reads only the rows needed. */
export async function embed(src: WeightSource, ids: ArrayLike<number>, H: number, names: OuterNames): Promise<Float32Array> {
  const name = `${names.embed}.weight`;
  const t = src.tensors.get(name);
  if (!t) throw new CheckpointError(src.dir, `tensor "${name}" is missing`);
  const vocab = t.shape[0]!;
  const out = new Float32Array(ids.length * H);
  const cache = new Map<number, Float32Array>();
  for (let i = 0; i < ids.length; i++) {
    const id = ids[i]!;
    if (!(id >= 0 && id < vocab)) throw new CheckpointError(src.dir, `token id ${id} is outside the vocabulary (${vocab})`);
    let row = cache.get(id);
    if (!row) {
      row = decodeToFloat32(await t.readRows(id, id + 1), t.dtype);
      cache.set(id, row);
    }
    out.set(row, i * H);
  }
  return out;
}

/** The final norm alone (calibration needs no logits: lm_head at 8B is 2.1 GB in f32). */
export function loadFinalNorm(src: WeightSource, names: OuterNames): Promise<Float32Array> {
  return f32(src, names.finalNorm);
}

/** Final norm and the output head (the embedding matrix when tied). */
export async function loadHead(src: WeightSource, cfg: ModelConfig, names: OuterNames): Promise<{ norm: Float32Array; head: LinearWeights }> {
  const norm = await loadFinalNorm(src, names);
  const head = await loadLinear(src, src.tensors.has(`${names.lmHead}.weight`) ? names.lmHead : names.embed);
  if (head.K !== cfg.hiddenSize) throw new CheckpointError(src.dir, `lm_head has ${head.K} inputs, expected hidden_size ${cfg.hiddenSize}`);
  return { norm, head };
}

/**
 * GEMM groups a layer (or a part of one) prepares for the engine and releases together. `byName`
 * loads linears by module name, their rows written from the source where the engine asks (writeRows);
 * `add` takes other loaders (views, dequantized exports). If building a layer fails midway, `release`
 * returns what was prepared so far.
 */
export class PreparedGroups {
  private held: PreparedGroup[] = [];

  constructor(
    private readonly src: WeightSource,
    readonly gemm: GemmEngine,
  ) {}

  /** The linears `modules` as one GEMM group; `dims`: each one's [N, K]. */
  byName(modules: string[], dims: [number, number][], opts?: { swiGlu?: boolean }): Promise<PreparedGroup> {
    return this.add(
      modules.map((m) => () => loadLinearLazily(this.src, m)),
      dims,
      opts,
    );
  }

  /** `swiGlu`: [gate, up] of a SwiGLU MLP (see prepareGroupFrom). */
  async add(loads: (() => Promise<LinearWeights>)[], dims: [number, number][], opts?: { swiGlu?: boolean }): Promise<PreparedGroup> {
    const g = await prepareGroupFrom(loads, dims, this.gemm, opts);
    this.held.push(g);
    return g;
  }

  async release(): Promise<void> {
    await Promise.all(this.held.splice(0).map((g) => g.release()));
  }
}