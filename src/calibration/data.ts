/**
 * Calibration data: token-id samples from a text, JSONL, parquet or token-id JSON file, tokenized
 * with the model's own tokenizer.json.
 *   .txt      the whole text tokenized once (no BOS), cut into windows of seqLen ids, the first N used
 *   .jsonl    one {"text": ...} per line, tokenized with special tokens, truncated to seqLen
 *   .parquet  column "text", as .jsonl
 *   .json     an array of token-id arrays, used exactly as given
 *   hf://datasets/ORG/NAME[@REV][?config=&split=&field=]   a Hub dataset's parquet records, as .jsonl
 *             (see hub-dataset.ts)
 */
import { readFile, stat } from 'node:fs/promises';
import { extname, join } from 'node:path';
import type { Tokenizer } from '@huggingface/tokenizers';
import { CalibrationDataError, CheckpointError } from '../errors.js';
import { hubDatasetTexts, modeloptDefaultMix, parseHubDataset, type HubDatasetOptions } from './hub-dataset.js';

export interface CalibrationOptions {
  /** Number of samples (windows) to use. */
  samples: number;
  /** Tokens per sample. */
  seqLen: number;
}

export const DEFAULT_CALIB_SAMPLES = 32;
export const DEFAULT_CALIB_SEQ_LEN = 512;

export async function loadTokenizer(modelDir: string): Promise<Tokenizer> {
  const p = join(modelDir, 'tokenizer.json');
  let json: object;
  try {
    json = JSON.parse(await readFile(p, 'utf8'));
  } catch (e) {
    throw new CheckpointError(p, (e as NodeJS.ErrnoException).code === 'ENOENT' ? 'missing: calibration text needs the model\'s tokenizer.json' : `not valid JSON (${(e as Error).message})`);
  }
  let config: object = {};
  try {
    config = JSON.parse(await readFile(join(modelDir, 'tokenizer_config.json'), 'utf8'));
  } catch {
    /* optional */
  }
  // loaded here, not at start-up (~25 ms): only runs that tokenize text need it
  const { Tokenizer: TokenizerClass } = await import('@huggingface/tokenizers');
  return new TokenizerClass(json, config);
}

/** A `.json` file holding an array of token-id arrays (empty arrays dropped), validated. */
export async function readTokenIdArrays(path: string): Promise<number[][]> {
  let data: unknown;
  try {
    data = JSON.parse(await readFile(path, 'utf8'));
  } catch (e) {
    throw new CalibrationDataError(`${path}: ${(e as NodeJS.ErrnoException).code === 'ENOENT' ? 'not found' : `not valid JSON (${(e as Error).message})`}`);
  }
  if (!Array.isArray(data) || !data.every((s) => Array.isArray(s) && s.every((x) => Number.isInteger(x) && x >= 0))) {
    throw new CalibrationDataError(`${path}: expected an array of token-id arrays`);
  }
  return (data as number[][]).filter((s) => s.length > 0);
}

/** Token ids of a text without special tokens. */
export function encodeText(tok: Tokenizer, text: string, specialTokens = false): number[] {
  return tok.encode(text, { add_special_tokens: specialTokens }).ids;
}

export async function loadCalibration(path: string, modelDir: string, opts: CalibrationOptions, hub: HubDatasetOptions = {}): Promise<number[][]> {
  const dataset = parseHubDataset(path);
  if (dataset) return tokenizeRecords(await hubDatasetTexts(dataset, opts.samples, hub), modelDir, opts, path);
  let size: number;
  try {
    size = (await stat(path)).size;
  } catch {
    throw new CalibrationDataError(`${path}: calibration data not found`);
  }
  if (size === 0) throw new CalibrationDataError(`${path}: calibration data is empty`);
  const ext = extname(path).toLowerCase();
  let samples: number[][];
  if (ext === '.json') {
    samples = await readTokenIdArrays(path);
  } else if (ext === '.txt' || ext === '') {
    const ids = encodePrefix(await loadTokenizer(modelDir), await readFile(path, 'utf8'), opts.samples * opts.seqLen);
    samples = [];
    for (let i = 0; i < ids.length && samples.length < opts.samples; i += opts.seqLen) samples.push(ids.slice(i, i + opts.seqLen));
  } else if (ext === '.jsonl' || ext === '.parquet') {
    samples = await tokenizeRecords(ext === '.jsonl' ? await jsonlTexts(path, opts.samples) : await parquetTexts(path, opts.samples), modelDir, opts, path);
  } else {
    throw new CalibrationDataError(`${path}: unsupported calibration file type "${ext}" (use .txt, .jsonl, .parquet or .json)`);
  }
  if (samples.length === 0) throw new CalibrationDataError(`${path}: no calibration samples (empty text?)`);
  return samples;
}

/** One sample per record: tokenized with the tokenizer's special tokens, truncated to seqLen. */
async function tokenizeRecords(texts: string[], modelDir: string, opts: CalibrationOptions, path: string): Promise<number[][]> {
  const tok = await loadTokenizer(modelDir);
  const samples = texts.map((t) => encodeText(tok, t, true).slice(0, opts.seqLen)).filter((s) => s.length > 0);
  if (samples.length === 0) throw new CalibrationDataError(`${path}: no calibration samples (empty text?)`);
  return samples;
}

/**
 * ModelOpt's default calibration data (cnn_dailymail + Nemotron-Post-Training-Dataset-v2, see
 * modeloptDefaultMix) from the Hub: `samples` records in all, in the mix's order.
 */
export async function loadModeloptDefaultMix(modelDir: string, opts: CalibrationOptions, hub: HubDatasetOptions = {}): Promise<number[][]> {
  const texts: string[] = [];
  for (const part of modeloptDefaultMix(opts.samples)) texts.push(...(await hubDatasetTexts(part.ref, part.count, hub)));
  return tokenizeRecords(texts, modelDir, opts, 'ModelOpt default calibration mix');
}

/**
 * Token ids of at least the first `need` tokens of a text (all of them if it is shorter). Tokenizes a
 * prefix cut at a line break, doubling it until it yields `need` tokens plus a margin; the margin
 * guarantees the ids kept are the ones the whole text would give (merges never reach across lines).
 */
export function encodePrefix(tok: Tokenizer, text: string, need: number): number[] {
  const margin = 64;
  for (let chars = Math.max(4096, need * 8); ; chars *= 2) {
    if (chars >= text.length) return encodeText(tok, text);
    const cut = text.lastIndexOf('\n', chars);
    const ids = encodeText(tok, text.slice(0, cut > 0 ? cut : chars));
    if (ids.length >= need + margin) return ids.slice(0, need);
  }
}

async function jsonlTexts(path: string, max: number): Promise<string[]> {
  const out: string[] = [];
  const lines = (await readFile(path, 'utf8')).split('\n');
  for (let i = 0; i < lines.length && out.length < max; i++) {
    const line = lines[i]!.trim();
    if (!line) continue;
    let rec: unknown;
    try {
      rec = JSON.parse(line);
    } catch {
      throw new CalibrationDataError(`${path}:${i + 1}: not valid JSON`);
    }
    const text = (rec as { text?: unknown })?.text;
    if (typeof text !== 'string') throw new CalibrationDataError(`${path}:${i + 1}: no "text" string field`);
    if (text.length > 0) out.push(text);
  }
  return out;
}

async function parquetTexts(path: string, max: number): Promise<string[]> {
  const { parquetReadObjects, asyncBufferFromFile } = await import('hyparquet');
  let rows: Record<string, unknown>[];
  try {
    rows = await parquetReadObjects({ file: await asyncBufferFromFile(path), columns: ['text'], rowEnd: max * 4 });
  } catch (e) {
    throw new CalibrationDataError(`${path}: cannot read parquet (${(e as Error).message})`);
  }
  const texts = rows.map((r) => r.text).filter((t): t is string => typeof t === 'string' && t.length > 0);
  if (rows.length > 0 && texts.length === 0) throw new CalibrationDataError(`${path}: no "text" column of strings`);
  return texts.slice(0, max);
}
