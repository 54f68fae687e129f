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
import type { LoadedLayer } from './models/index.js';
import { defaultGemm, type GemmEngine, type PreparedLinear } from './forward/gemm.js';
import { cpus } from 'node:os';
import { embed, loadHead, weightSource } from './forward/weights.js';
import { ropeTables } from './forward/rope.js';
import { rmsnorm } from './forward/ops.js';
import { encodePrefix, encodeText, loadTokenizer, readTokenIdArrays } from './calibration/data.js';
import { CalibrationDataError, CheckpointError } from './errors.js';

export interface PerplexityOptions {
  /** Positions per window including BOS (default 512). */
  window?: number;
  /** Score only the first N windows (default: all). */
  maxWindows?: number;
  onWindow?: (done: number, total: number) => void;
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

export async function perplexity(modelDir: string, textPath: string, opts: PerplexityOptions = {}): Promise<PerplexityResult> {
  const { plain } = await readConfigJson(modelDir);
  const arch = architectureFor(plain.model_type, join(modelDir, 'config.json'));
  const cfg = arch.parseConfig(plain, join(modelDir, 'config.json'));
  // the windows: [input ids, the ids their positions predict]
  let windows: { input: number[]; targets: number[] }[];
  if (extname(textPath).toLowerCase() === '.json') {
    // token-id arrays used as given (no BOS): positions 0..T-2 predict ids 1..T-1 of each array
    const arrays = (await readTokenIdArrays(textPath)).slice(0, opts.maxWindows ?? Infinity);
    if (arrays.length === 0) throw new CalibrationDataError(`${textPath}: no token ids`);
    windows = arrays.map((a) => ({ input: a, targets: a.slice(1) }));
  } else {
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
    windows = Array.from({ length: total }, (_, w) => {
      const part = ids.slice(w * chunk, (w + 1) * chunk);
      return { input: [bos, ...part], targets: part };
    });
  }
  const quantAlgo = (plain.quantization_config as { quant_algo?: string } | undefined)?.quant_algo;
  const ck = await openCheckpoint(modelDir);
  try {
    const src = weightSource(ck, quantAlgo);
    const gemm = opts.gemm ?? (await defaultGemm(cpus().length));
    const layers: LoadedLayer[] = [];
    for (let i = 0; i < cfg.numLayers; i++) layers.push(await arch.forward.load(src, arch.layer(i, cfg), cfg, gemm));
    const { norm, head: headWeights } = await loadHead(src, cfg, arch.names);
    const head = await gemm.prepare(headWeights);
    const V = headWeights.N;
    const { cos, sin } = ropeTables(cfg.rope, cfg.headDim, Math.max(...windows.map((w) => w.input.length)));
    const total = windows.length;
    let nll = 0;
    let scored = 0;
    for (let w = 0; w < total; w++) {
      const { input, targets: part } = windows[w]!;
      const T = input.length;
      let h = await embed(src, input, cfg.hiddenSize, arch.names);
      for (const layer of layers) h = await arch.forward.run(h, T, layer, cfg, cos, sin);
      const x = rmsnorm(h, T, cfg.hiddenSize, norm, cfg.rmsNormEps);
      nll += await scoreNextTokens(x, T, head, V, part);
      scored += part.length;
      opts.onWindow?.(w + 1, total);
    }
    for (const l of layers) await l.release();
    await head.release();
    const meanNll = nll / scored;
    return { perplexity: Math.exp(meanNll), meanNll, tokens: scored, windows: total, quantAlgo };
  } finally {
    await ck.close();
  }
}

/** Sum over positions t < T-1... of -log softmax(logits[t])[target[t]]; position t predicts targets[t]. */
async function scoreNextTokens(x: Float32Array, T: number, head: PreparedLinear, V: number, targets: number[]): Promise<number> {
  const logits = await head.run(x, T); // [T, V]
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
