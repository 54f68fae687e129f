/**
 * Perplexity, with the protocol of ../shared/data/stories260K/reference/stories260K-reference.json:
 * the whole text tokenized without BOS, cut into chunks of (window - 1) ids, each fed as [BOS] + chunk,
 * every chunk id scored (the first one predicted from BOS); mean natural-log NLL over all scored ids.
 * A `.json` of token-id arrays (what `calibrate --calib` also reads) is used as given, without BOS:
 * perplexity = exp(mean next-token NLL over positions 1..T-1 of every array).
 * On an export, the model runs as the engines run it: dequantized weights, pre_quant_scale, and
 * activations quantized with input_scale.
 */
import { readFile } from 'node:fs/promises';
import { extname, join } from 'node:path';
import { openCheckpoint } from './safetensors/checkpoint.js';
import { readConfigJson } from './model.js';
import { architectureFor } from './models/index.js';
import { isEagleDraft } from './models/eagle.js';
import type { LoadedLayer } from './models/index.js';
import { defaultGemm, type GemmEngine, type PreparedLinear } from './forward/gemm.js';
import { cpus } from 'node:os';
import { embed, loadHead, weightSource } from './forward/weights.js';
import { ropeTables } from './forward/rope.js';
import { rmsnorm } from './forward/ops.js';
import { encodePrefix, encodeText, loadTokenizer, readTokenIdArrays } from './calibration/data.js';
import { CalibrationDataError, CheckpointError, UsageError } from './errors.js';
import type { ModelConfig } from './forward/config.js';

export interface PerplexityOptions {
  /** Positions per window including BOS (default 512). */
  window?: number;
  /** Score only the first N windows (default: all). */
  maxWindows?: number;
  onWindow?: (done: number, total: number) => void;
  /** Each window's logits [T, V] as computed (the buffer is reused: copy what you keep). */
  onLogits?: (window: number, logits: Float32Array, T: number, V: number) => void;
  /** GEMM engine (default: onnxruntime when it loads, else JavaScript). */
  gemm?: GemmEngine;
}

export interface PerplexityResult {
  perplexity: number;
  meanNll: number;
  tokens: number;
  windows: number;
  quantAlgo?: string;
}

/** The scored windows of a text: input ids (BOS first for a text) and the ids their positions predict. */
export interface TextWindow {
  input: number[];
  targets: number[];
}

/** The protocol's windows of a text (or a .json of token-id arrays) for a model's tokenizer and BOS. */
export async function textWindows(modelDir: string, textPath: string, opts: Pick<PerplexityOptions, 'window' | 'maxWindows'> = {}): Promise<TextWindow[]> {
  const { plain } = await readConfigJson(modelDir);
  refuseEagleDraft(plain, modelDir);
  const arch = architectureFor(plain.model_type, join(modelDir, 'config.json'));
  const cfg = arch.parseConfig(plain, join(modelDir, 'config.json'));
  if (extname(textPath).toLowerCase() === '.json') {
    // token-id arrays used as given (no BOS): positions 0..T-2 predict ids 1..T-1 of each array
    const arrays = (await readTokenIdArrays(textPath)).slice(0, opts.maxWindows ?? Infinity);
    if (arrays.length === 0) throw new CalibrationDataError(`${textPath}: no token ids`);
    return arrays.map((a) => ({ input: a, targets: a.slice(1) }));
  }
  const window = opts.window ?? 512;
  let text: string;
  try {
    text = await readFile(textPath, 'utf8');
  } catch {
    throw new CalibrationDataError(`${textPath}: text not found`);
  }
  if (text.length === 0) throw new CalibrationDataError(`${textPath}: text is empty`);
  const bos = cfg.bosTokenId;
  if (bos === undefined) throw new CheckpointError(join(modelDir, 'config.json'), 'bos_token_id is needed for the perplexity protocol');
  const tok = await loadTokenizer(modelDir);
  const ids = opts.maxWindows !== undefined ? encodePrefix(tok, text, opts.maxWindows * (window - 1)) : encodeText(tok, text);
  const chunk = window - 1;
  const total = Math.min(Math.ceil(ids.length / chunk), opts.maxWindows ?? Infinity);
  return Array.from({ length: total }, (_, w) => {
    const part = ids.slice(w * chunk, (w + 1) * chunk);
    return { input: [bos, ...part], targets: part };
  });
}

/**
 * A model (or an export, run as the engines run it) loaded for scoring: every layer prepared once,
 * then logits [T, V] of any window, or its pieces (embedding, one layer, the head) for per-layer use.
 */
export interface ModelRunner {
  cfg: ModelConfig;
  quantAlgo?: string;
  /** Vocabulary size (the head's rows). */
  V: number;
  embed(input: number[]): Promise<Float32Array>;
  /** h [T, H] through layer i, written over h. */
  layer(i: number, h: Float32Array, T: number): Promise<Float32Array>;
  /** Final norm and head: logits [T, V] (the engine's buffer: read before the next call). */
  head(h: Float32Array, T: number): Promise<Float32Array>;
  logits(input: number[]): Promise<Float32Array>;
  close(): Promise<void>;
}

/** An EAGLE draft (source or export) predicts from its target's hidden states: it has no perplexity of its own. */
function refuseEagleDraft(plain: Record<string, unknown>, modelDir: string): void {
  if (isEagleDraft(plain)) {
    throw new UsageError(`${modelDir} is an EAGLE draft: it drafts tokens from its target model's hidden states and has no perplexity of its own; evaluate the target, and serve the pair with an engine's speculative decoding`);
  }
}

export async function openRunner(modelDir: string, gemm?: GemmEngine): Promise<ModelRunner> {
  const { plain } = await readConfigJson(modelDir);
  refuseEagleDraft(plain, modelDir);
  const arch = architectureFor(plain.model_type, join(modelDir, 'config.json'));
  const cfg = arch.parseConfig(plain, join(modelDir, 'config.json'));
  const quantAlgo = (plain.quantization_config as { quant_algo?: string } | undefined)?.quant_algo;
  const ck = await openCheckpoint(modelDir);
  const layers: LoadedLayer[] = [];
  let head: PreparedLinear | undefined;
  try {
    const src = weightSource(ck, quantAlgo);
    const engine = gemm ?? (await defaultGemm(cpus().length));
    for (let i = 0; i < cfg.numLayers; i++) layers.push(await arch.forward.load(src, arch.layer(i, cfg), cfg, engine));
    const { norm, head: headWeights } = await loadHead(src, cfg, arch.names);
    head = await engine.prepare(headWeights);
    const prepared = head;
    let rope = ropeTables(cfg.rope, cfg.headDim, 1);
    let ropeLen = 1;
    const tables = (T: number) => {
      if (T > ropeLen) (rope = ropeTables(cfg.rope, cfg.headDim, T)), (ropeLen = T);
      return rope;
    };
    const runner: ModelRunner = {
      cfg,
      quantAlgo,
      V: headWeights.N,
      embed: (input) => embed(src, input, cfg.hiddenSize, arch.names),
      layer: (i, h, T) => {
        const { cos, sin } = tables(T);
        return arch.forward.run(h, T, layers[i]!, cfg, cos, sin);
      },
      head: (h, T) => prepared.run(rmsnorm(h, T, cfg.hiddenSize, norm, cfg.rmsNormEps), T),
      async logits(input) {
        const T = input.length;
        let h = await runner.embed(input);
        for (let i = 0; i < layers.length; i++) h = await runner.layer(i, h, T);
        return runner.head(h, T);
      },
      async close() {
        for (const l of layers) await l.release();
        await prepared.release();
        await ck.close();
      },
    };
    return runner;
  } catch (e) {
    for (const l of layers) await l.release();
    await head?.release();
    await ck.close();
    throw e;
  }
}

export async function perplexity(modelDir: string, textPath: string, opts: PerplexityOptions = {}): Promise<PerplexityResult> {
  const windows = await textWindows(modelDir, textPath, opts);
  const runner = await openRunner(modelDir, opts.gemm);
  try {
    const total = windows.length;
    let nll = 0;
    let scored = 0;
    for (let w = 0; w < total; w++) {
      const { input, targets } = windows[w]!;
      const logits = await runner.logits(input);
      opts.onLogits?.(w, logits, input.length, runner.V);
      nll += scoreNextTokens(logits, runner.V, targets);
      scored += targets.length;
      opts.onWindow?.(w + 1, total);
    }
    const meanNll = nll / scored;
    return { perplexity: Math.exp(meanNll), meanNll, tokens: scored, windows: total, quantAlgo: runner.quantAlgo };
  } finally {
    await runner.close();
  }
}

/** Sum over positions t of -log softmax(logits[t])[targets[t]]; position t predicts targets[t]. logits [T, V]. */
export function scoreNextTokens(logits: Float32Array, V: number, targets: number[]): number {
  let nll = 0;
  for (let t = 0; t < targets.length; t++) {
    const o = t * V;
    let m = -Infinity;
    for (let v = 0; v < V; v++) m = Math.max(m, logits[o + v]!);
    let s = 0;
    for (let v = 0; v < V; v++) s += Math.exp(logits[o + v]! - m);
    nll += Math.log(s) + m - logits[o + targets[t]!]!;
  }
  return nll;
}
