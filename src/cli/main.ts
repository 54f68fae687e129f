#!/usr/bin/env node
/** The `rxquant` command line. Every user error ends in one `error: ...` line and a non-zero exit. */
import { refuseDestructiveOutput, hubCacheRepoOf, type GuardedInput } from '../util/output-guard.js';
import { Command, Option, CommanderError } from 'commander';
import { resolve, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { existsSync, readFileSync } from 'node:fs';
import { RxquantError, UsageError } from '../errors.js';
import { inspect, formatInspect } from '../inspect.js';
import { verifyExport } from '../verify.js';
import { exportCheckpoint } from '../export-checkpoint.js';
import { FORMAT_NAMES, formatSpec, kvCacheMode, KV_CACHE_MODES, needsActivationStats, type FormatSpec } from '../export/formats.js';
import { loadStats, type Stats } from '../export/stats.js';
import { AWQ_ALGORITHMS, awqFormat, type AwqAlgorithm } from '../calibration/awq-layer.js';
import { formatBytes } from '../safetensors/size.js';
import { DTYPE_SIZES } from '../safetensors/dtypes.js';
import { outputMode, Reporter } from './progress.js';
import { loadCalibration, loadModeloptDefaultMix, DEFAULT_CALIB_SAMPLES, DEFAULT_CALIB_SEQ_LEN } from '../calibration/data.js';
import { calibrateModel, writeStats } from '../calibrate-checkpoint.js';
import type { CalibrateProgress } from '../../operators/calibrate.js';
import { perplexity } from '../eval.js';
import { qualityReport, reportHtml, reportSummary, writeAtomically } from '../report.js';
import { openModel } from '../model.js';
import { createPlan } from '../export/plan.js';
import { planExport, formatPlan } from '../plan-report.js';
import { resolveModel, uploadExport } from '../hub.js';
import { exportEagleDraft, isEagleDraftDir } from '../eagle.js';
import { addDistributedCommands, printWorkPlan, StderrReporter } from './distributed.js';

/** Package root (works from src/ under tsx/vitest and from dist/src/ once built). */
export const PACKAGE_ROOT = (() => {
  let d = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 5; i++) {
    try {
      const pkg = JSON.parse(readFileSync(join(d, 'package.json'), 'utf8'));
      if (pkg.name === 'rxquant') return d;
    } catch {
      /* keep looking */
    }
    d = dirname(d);
  }
  return process.cwd();
})();
export const DEFAULT_MODEL = join(PACKAGE_ROOT, 'assets', 'stories260K');
export const DEFAULT_CALIB_TEXT = join(PACKAGE_ROOT, 'assets', 'text', 'tinystories_calib.txt');
export const DEFAULT_EVAL_TEXT = join(PACKAGE_ROOT, 'assets', 'text', 'tinystories_eval.txt');

function intOption(name: string) {
  return (v: string) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 0) throw new UsageError(`${name} must be a non-negative integer, got "${v}"`);
    return n;
  };
}

/** Options `quantize` and `plan` share: what to export and how. */
function withExportOptions(cmd: Command): Command {
  return cmd
    .addOption(new Option('-f, --format <format>', 'quantization format').choices([...FORMAT_NAMES]).default('nvfp4'))
    .option('--hf-config <dir>', 'the model is a Megatron-Core torch_dist checkpoint: read it with this Hugging Face model folder\'s config.json (its tokenizer and side files are copied)')
    .option('--revision <rev>', 'Hub revision (branch, tag or commit) when the model is a repo id', 'main')
    .option('--base <target>', 'the model is an EAGLE draft: the target model it drafts for (folder or repo id), whose hidden states calibrate it')
    .addOption(new Option('--kv-cache <mode>', 'KV cache quantization').choices([...KV_CACHE_MODES]).default('fp8_cast'))
    .option('--max-shard-size <size>', 'largest shard (GB/MB decimal, GiB/MiB binary)', '10GB')
    .option('--exclude <pattern...>', 'extra module patterns to keep unquantized (fnmatch, * matches dots)')
    .option('--workers <n>', 'kernel worker threads (default: one per core)', intOption('--workers'))
    .option('--calib-samples <n>', 'calibration samples', intOption('--calib-samples'), DEFAULT_CALIB_SAMPLES)
    .option('--calib-seq-len <n>', 'tokens per calibration sample', intOption('--calib-seq-len'), DEFAULT_CALIB_SEQ_LEN)
    .addOption(awqOption());
}

function awqOption(): Option {
  return new Option('--awq <algorithm>', 'AWQ search for the AWQ formats: lite (the default, as ModelOpt), clip, full (lite then clip), none (round-to-nearest: pre_quant_scale of ones)').choices([...AWQ_ALGORITHMS]);
}

/** The AWQ search a command runs: `--awq` checked against the format ('none' for formats without AWQ). */
function awqChoice(format: FormatSpec, given: AwqAlgorithm | undefined): AwqAlgorithm {
  if (!format.awq) {
    if (given !== undefined && given !== 'none') throw new UsageError(`--awq applies to the AWQ formats (${FORMAT_NAMES.filter((f) => formatSpec(f).awq).join(', ')}), not ${format.name}`);
    return 'none';
  }
  const algorithm = given ?? 'lite';
  if (algorithm !== 'none') awqFormat({ format, algorithm }); // refuses what is not available, before any work
  return algorithm;
}

/** A `--calib` value as the loaders take it: a Hub dataset as given, a file resolved. */
const calibArg = (c: string) => (c.startsWith('hf://') ? c : resolve(c));

/** One calibrated unit (a layer, or layer -1: the final norm and lm_head's statistics): its `calibrate` event, and the bar with that unit's tokens/s. */
function reportCalibrated(rep: Reporter, p: CalibrateProgress): void {
  rep.event('calibrate', {
    layer: p.layer,
    tokens: p.tokens,
    seconds: p.seconds,
    tokens_per_s: p.tokens / p.seconds,
    ...(p.loadSeconds !== undefined ? { load_seconds: p.loadSeconds } : {}),
    ...(p.awqSeconds !== undefined ? { awq_seconds: p.awqSeconds } : {}),
  });
  rep.update('calibrate', undefined, `${(p.tokens / p.seconds).toFixed(0)} tokens/s`);
}

/**
 * The calibration samples of a command: `--calib` when given; for the bundled model its bundled
 * text; for any other model ModelOpt's default mix from the Hub (spec §11.1), and when that cannot
 * be had (offline, unreachable, gated) the bundled text, saying why and naming --calib.
 */
async function calibrationData(o: Record<string, any>, modelDir: string, rep: Reporter): Promise<{ samples: number[][]; source: string }> {
  const opts = { samples: o.calibSamples, seqLen: o.calibSeqLen };
  if (o.calib) return { samples: await loadCalibration(calibArg(o.calib), modelDir, opts), source: calibArg(o.calib) };
  if (resolve(modelDir) !== resolve(DEFAULT_MODEL)) {
    const why = process.env.HF_HUB_OFFLINE === '1' ? 'HF_HUB_OFFLINE=1' : undefined;
    if (!why) {
      try {
        return { samples: await loadModeloptDefaultMix(modelDir, opts), source: "ModelOpt's default mix (cnn_dailymail 3.0.0 + Nemotron-Post-Training-Dataset-v2)" };
      } catch (e) {
        rep.warn(`ModelOpt's default calibration mix is not available (${(e as Error).message}); calibrating on the bundled TinyStories text instead: pass --calib with data like your model's use (a file or hf://datasets/ORG/NAME)`);
      }
    } else rep.info(`${why}: calibrating on the bundled TinyStories text (pass --calib for data like your model's use)`);
  }
  return { samples: await loadCalibration(DEFAULT_CALIB_TEXT, modelDir, opts), source: DEFAULT_CALIB_TEXT };
}

/** Statistics without the AWQ scales (`--awq none`: round-to-nearest whatever the file holds). */
function withoutAwqScales(stats: Stats): Stats {
  return new Map([...stats].filter(([k]) => !/\.(pre_quant_scale|awq_alpha|awq_loss)$/.test(k)));
}

/** The source model's folder and, for a Hub download, its cache folder: nothing may be written into either. */
function sourceInputs(modelDir: string): GuardedInput[] {
  const inputs: GuardedInput[] = [{ what: 'the source model', path: modelDir, noWritesInside: true }];
  const hub = hubCacheRepoOf(modelDir);
  if (hub) inputs.push({ what: "the source's Hugging Face cache folder", path: hub, noWritesInside: true });
  return inputs;
}

/** The `part` (1-based) and `parts` fields of a --json unit event, for a layer written in parts. */
function partFields(e: { part?: { index: number; count: number } }): { part?: number; parts?: number } {
  return e.part ? { part: e.part.index + 1, parts: e.part.count } : {};
}

/**
 * `quantize DRAFT --base TARGET`: an EAGLE draft calibrated on its target's hidden states and written
 * as ModelOpt writes drafts (src/eagle.ts).
 */
async function quantizeEagle(draftDir: string, o: Record<string, any>, rep: Reporter, format: FormatSpec): Promise<void> {
  if (o.eval) throw new UsageError('--eval scores a model on its own; an EAGLE draft only runs behind its target');
  const baseDir = resolve(await resolveModel(o.base, { revision: 'main', onFile: (f, n) => rep.info(`fetching ${f} (${formatBytes(n)})`) }));
  const guarded: GuardedInput[] = [...sourceInputs(draftDir), ...sourceInputs(baseDir).map((g) => ({ ...g, what: g.what.replace('the source', 'the --base target') }))];
  if (o.stats) guarded.push({ what: 'the --stats file', path: resolve(o.stats) }, { what: "the --stats file's folder", path: dirname(resolve(o.stats)) });
  if (o.calib && !o.calib.startsWith('hf://')) guarded.push({ what: "the --calib file's folder", path: dirname(resolve(o.calib)) });
  await refuseDestructiveOutput(o.out, guarded);
  awqChoice(format, o.awq);
  const kvCache = kvCacheMode(o.kvCache);
  const stats = o.stats ? await loadStats(resolve(o.stats)) : undefined;
  let calibration: number[][] | undefined;
  if (o.calib || (needsActivationStats(format, kvCache) && !stats)) {
    // token ids of the target's tokenizer: the target reads them first
    const data = await calibrationData(o, baseDir, rep);
    calibration = data.samples;
    const toks = calibration.reduce((a, s) => a + s.length, 0);
    rep.info(`calibrating on ${calibration.length} samples (${toks} tokens) of ${data.source}, through the target ${baseDir}`);
    rep.event('calibration', { file: data.source, samples: calibration.length, tokens: toks });
  }
  const started = Date.now();
  const done = await exportEagleDraft({
    draft: draftDir,
    base: baseDir,
    format: format.name,
    out: resolve(o.out),
    stats,
    calibration,
    kvCache,
    exclude: o.exclude,
    workers: o.workers,
    overwrite: o.overwrite,
    directIO: o.directIo,
    onNote: (n) => rep.info(n),
    onCalibrate: (p) => {
      rep.event('calibrate', { layer: p.layer, seconds: p.seconds, ...(p.layer < 0 ? { draft: true } : {}) });
      rep.info(p.layer < 0 ? `calibrated the draft (${p.seconds.toFixed(1)} s)` : `target layer ${p.layer} (${p.seconds.toFixed(1)} s)`);
    },
    onPlan: (plan) => {
      for (const w of plan.warnings) rep.warn(w);
      rep.event('plan', { format: format.name, quant_algo: format.quantAlgo, tensors: plan.outputs.length, layers: plan.model.layers.length, eagle: true });
    },
    onEvent: (e) => {
      if (e.type === 'unit') rep.event('unit', { layer: e.layer, kind: e.kind, ...partFields(e), bytes_done: e.bytesWritten, bytes_total: e.totalBytes });
    },
  });
  const secs = (Date.now() - started) / 1000;
  const q = done.plan.decisions;
  const nq = [...q.values()].filter((d) => d.quantized).length;
  rep.event('done', { out: done.outDir, format: format.name, quant_algo: format.quantAlgo, bytes: done.totalBytes, shards: 1, quantized_linears: nq, unquantized_linears: q.size - nq, seconds: secs, warnings: done.plan.warnings, eagle: true });
  rep.info(`wrote ${done.outDir}: EAGLE draft, format ${format.name} (quant_algo ${format.quantAlgo}), ${nq}/${q.size} linears quantized, ${formatBytes(done.totalBytes)}, ${secs.toFixed(1)} s`);
  if (o.upload) {
    await uploadExport(done.outDir, o.upload);
    rep.info(`uploaded ${done.outDir} to ${o.upload}`);
  }
}

/** --hf-config as an absolute folder, checked to hold a config.json, or undefined. */
function megatronConfig(o: Record<string, any>): string | undefined {
  if (!o.hfConfig) return undefined;
  const dir = resolve(o.hfConfig);
  if (!existsSync(join(dir, 'config.json'))) throw new UsageError(`--hf-config ${o.hfConfig}: no config.json there (give the Hugging Face model folder the Megatron checkpoint was trained from)`);
  return dir;
}

/** `verify --engine` names and the engines they mean. */
const ENGINE_OPTION = { vllm: 'vLLM', sglang: 'SGLang', trtllm: 'TensorRT-LLM' } as const;

export function buildProgram(): Command {
  const program = new Command();
  program
    .name('rxquant')
    .description('Quantize Hugging Face LLM checkpoints into NVIDIA ModelOpt unified checkpoints (FP8, NVFP4, INT4/W4A8 AWQ) for vLLM, SGLang and TensorRT-LLM.')
    .version(JSON.parse(readFileSync(join(PACKAGE_ROOT, 'package.json'), 'utf8')).version)
    .exitOverride();

  program
    .command('inspect')
    .description('list the tensors of a safetensors file or checkpoint folder, totals per dtype, the architecture and any quantization config')
    .argument('<file-or-folder>')
    .option('--all', 'list every tensor (default: the first 200)')
    .option('--json', 'print the report as JSON')
    .action(async (path: string, o: { all?: boolean; json?: boolean }) => {
      const r = await inspect(resolve(path));
      if (o.json) process.stdout.write(JSON.stringify(r, null, 2) + '\n');
      else process.stdout.write(formatInspect(r, o.all ? Infinity : 200) + '\n');
    });

  withExportOptions(program
    .command('quantize')
    .description('export a checkpoint to a ModelOpt unified checkpoint')
    .argument('[model]', 'model folder or Hugging Face repo id org/name (default: the bundled stories260K)'))
    .option('-o, --out <dir>', 'output folder', 'rxquant-out')
    .option('--stats <file>', 'activation statistics (safetensors: <module>.input_amax, ...), e.g. from `rxquant calibrate`')
    .option('--calib <file>', 'calibration data: .txt, .jsonl, .parquet, .json token ids, or hf://datasets/ORG/NAME[@REV][?config=C&split=S&field=F]; default: the bundled text for the bundled model, else ModelOpt\'s default mix from the Hub')
    .option('--eval <text>', 'report perplexity on this text before and after (default without a model argument: the bundled text)')
    .option('--eval-windows <n>', 'windows of 512 tokens scored by --eval (0 = the whole text)', intOption('--eval-windows'), 16)
    .option('--layers-in-flight <n>', 'decoder layers between reader and writer at once', intOption('--layers-in-flight'), 2)
    .option('--overwrite', 'replace a non-empty output folder')
    .option('--no-direct-io', 'read and write through the page cache instead of O_DIRECT (for file systems where O_DIRECT is slow)')
    .option('--restart', 'discard an interrupted export made with other options instead of refusing')
    .option('--checkpoint-every <size>', 'record finished layers for resume after this many bytes written (each record waits for the disk)', '2GB')
    .option('--upload <repo>', 'push the finished export to this Hugging Face model repo (needs HF_TOKEN)')
    .option('--json', 'one JSON object per line on stdout (progress, warnings, summary)')
    .action(async (model: string | undefined, o: Record<string, any>) => {
      const rep = new Reporter(outputMode(o.json));
      const format = formatSpec(o.format);
      const hfConfig = megatronConfig(o);
      const modelDir = hfConfig ? resolve(model ?? '.') : resolve(await resolveModel(model ?? DEFAULT_MODEL, { revision: o.revision, onFile: (f, n) => rep.info(`fetching ${f} (${formatBytes(n)})`) }));
      const eagle = !hfConfig && (await isEagleDraftDir(modelDir).catch(() => false));
      if (o.base && !eagle) throw new UsageError(`--base is for EAGLE drafts, and ${modelDir}/config.json describes none (no "eagle_config")`);
      if (eagle && !o.base) throw new UsageError(`${modelDir} is an EAGLE draft: name the model it drafts for with --base TARGET (its hidden states calibrate the draft)`);
      if (eagle) return quantizeEagle(modelDir, o, rep, format);
      if (hfConfig && !model) throw new UsageError('--hf-config needs the Megatron checkpoint folder as the model argument');
      if (hfConfig && o.eval) throw new UsageError('--eval runs a Hugging Face checkpoint: evaluate the export instead (rxquant eval OUT --text FILE)');
      // never write into, over or around an input, whatever --overwrite says
      const guarded: GuardedInput[] = sourceInputs(modelDir);
      if (hfConfig) guarded.push({ what: 'the --hf-config model folder', path: hfConfig, noWritesInside: true });
      if (o.stats) guarded.push({ what: 'the --stats file', path: resolve(o.stats) }, { what: "the --stats file's folder", path: dirname(resolve(o.stats)) });
      if (o.calib && !o.calib.startsWith('hf://')) guarded.push({ what: "the --calib file's folder", path: dirname(resolve(o.calib)) });
      if (o.eval) guarded.push({ what: "the --eval text's folder", path: dirname(resolve(o.eval)) });
      await refuseDestructiveOutput(o.out, guarded);
      // validate config.json, every shard header and what the format can do with the model before
      // anything else is read or computed (calibration included)
      const opened = await openModel(modelDir, { hfConfig });
      try {
        for (const n of opened.notes) rep.info(n);
        createPlan(opened, format, { kvCache: kvCacheMode(o.kvCache), exclude: o.exclude, deferStatsCheck: true });
      } finally {
        await opened.close();
      }
      const awq = awqChoice(format, o.awq);
      let stats = o.stats ? await loadStats(resolve(o.stats)) : undefined;
      if (stats && awq === 'none') stats = withoutAwqScales(stats);
      const needsStats = needsActivationStats(format, kvCacheMode(o.kvCache)) || awq !== 'none';
      if (stats && !o.calib && awq !== 'none') {
        const has = [...stats.keys()].some((k) => k.endsWith('.pre_quant_scale'));
        rep.info(`no AWQ search with --stats alone (a search needs activations; add --calib to run it): pre_quant_scale ${has ? 'as the statistics file gives it' : 'of ones (round-to-nearest)'}`);
      }
      let calibration: number[][] | undefined;
      if (o.calib || (needsStats && !stats)) {
        const data = await calibrationData(o, hfConfig ?? modelDir, rep);
        calibration = data.samples;
        const toks = calibration.reduce((a, s) => a + s.length, 0);
        rep.info(`calibrating on ${calibration.length} samples (${toks} tokens) of ${data.source}`);
        rep.event('calibration', { file: data.source, samples: calibration.length, tokens: toks });
      }
      const evalText = o.eval ? resolve(o.eval) : model === undefined ? DEFAULT_EVAL_TEXT : undefined;
      const evalOpts = { maxWindows: o.evalWindows === 0 ? undefined : o.evalWindows };
      const before = evalText ? await perplexity(modelDir, evalText, evalOpts) : undefined;
      const started = Date.now();
      let unitsSeen = 0;
      const onSigint = () => {
        process.stderr.write(`\ninterrupted: the partial export is kept; run the same command again to resume\n`);
        process.exit(130);
      };
      process.once('SIGINT', onSigint);
      const done = await exportCheckpoint({
        model: modelDir,
        hfConfig,
        format: format.name,
        out: resolve(o.out),
        stats,
        kvCache: kvCacheMode(o.kvCache),
        maxShardSize: o.maxShardSize,
        exclude: o.exclude,
        workers: o.workers,
        overwrite: o.overwrite,
        directIO: o.directIo,
        layersInFlight: o.layersInFlight,
        calibration,
        awq,
        resumable: true,
        restart: o.restart,
        checkpointEvery: o.checkpointEvery,
        onTensor: (name, bytes) => rep.event('tensor', { tensor: name, bytes }),
        onResume: (n) => {
          rep.info(`resuming an interrupted export: ${n} unit(s) already on disk are kept`);
          rep.event('resume', { units_done: n });
        },
        onCalibrate: (p) => reportCalibrated(rep, p),
        onPlan: (plan) => {
          for (const w of plan.warnings) rep.warn(w);
          const total = plan.outputs.length;
          rep.event('plan', { format: format.name, quant_algo: format.quantAlgo, tensors: total, layers: plan.model.layers.length });
          if (calibration) rep.startBar('calibrate', plan.model.layers.length + 1, 'items');
          rep.startBar('write', plan.outputs.reduce((a, t) => a + t.shape.reduce((x, y) => x * y, 1) * DTYPE_SIZES[t.dtype], 0), 'bytes');
        },
        onEvent: (e) => {
          if (e.type === 'unit') {
            // crash-safety tests: die hard after N units, as a power loss would
            if (process.env.RXQUANT_TEST_KILL_AFTER_UNITS && ++unitsSeen >= Number(process.env.RXQUANT_TEST_KILL_AFTER_UNITS)) process.kill(process.pid, 'SIGKILL');
            const secs = (Date.now() - started) / 1000;
            rep.event('unit', { layer: e.layer, kind: e.kind, ...partFields(e), resumed: e.resumed ?? false, bytes_done: e.bytesWritten, bytes_total: e.totalBytes, bytes_per_s: e.bytesWritten / secs });
            rep.update('write', e.bytesWritten);
          }
        },
      });
      rep.stopBars();
      const secs = (Date.now() - started) / 1000;
      const q = done.plan.decisions;
      const nq = [...q.values()].filter((d) => d.quantized).length;
      rep.event('done', {
        out: done.outDir,
        format: format.name,
        quant_algo: format.quantAlgo,
        bytes: done.totalBytes,
        shards: done.shards.shards.length,
        quantized_linears: nq,
        unquantized_linears: q.size - nq,
        seconds: secs,
        warnings: done.plan.warnings,
      });
      rep.info(`wrote ${done.outDir}`);
      rep.info(`format ${format.name} (quant_algo ${format.quantAlgo}), ${nq}/${q.size} linears quantized, ${formatBytes(done.totalBytes)} in ${done.shards.shards.length} shard(s), ${secs.toFixed(1)} s`);
      if (o.upload) {
        await uploadExport(done.outDir, o.upload);
        rep.info(`uploaded ${done.outDir} to ${o.upload}`);
        rep.event('upload', { repo: o.upload });
      }
      if (evalText && before) {
        const after = await perplexity(done.outDir, evalText, evalOpts);
        rep.event('perplexity', { text: evalText, tokens: after.tokens, before: before.perplexity, after: after.perplexity });
        rep.info(`perplexity on ${after.tokens} tokens of ${evalText}: ${before.perplexity.toFixed(4)} before, ${after.perplexity.toFixed(4)} after (${format.name})`);
      }
    });

  withExportOptions(program
    .command('plan')
    .description('show what an export would write and need (shards, memory, disk, time, engines) without writing anything')
    .argument('[model]', 'model folder or Hugging Face repo id (default: the bundled stories260K)'))
    .option('-o, --out <dir>', 'output folder (for the free-space check)', 'rxquant-out')
    .option('--stats <file>', 'statistics will be given (no calibration in the memory estimate)')
    .option('--json', 'print the report as JSON')
    .option('--tasks', 'print the export as a work plan instead (JSON: calibration groups, merge, one task per shard, assemble) for `rxquant task` or `rxquant submit`; the same input and options give the same bytes')
    .option('--work <dir>', 'with --tasks: the shared folder task results go to (default: .<out>.rxquant-work beside --out)')
    .option('--calib <file>', 'with --tasks: the calibration data (as quantize reads it); its token ids go into the plan')
    .option('--calib-per-task <n>', 'with --tasks: calibration samples per task (AWQ formats: all in one)', intOption('--calib-per-task'), 32)
    .action(async (model: string | undefined, o: Record<string, any>) => {
      const format = formatSpec(o.format);
      if (o.tasks) {
        if (o.base) throw new UsageError('--tasks plans a model export; an EAGLE draft is quantized in one process (rxquant quantize DRAFT --base TARGET)');
        const rep = new StderrReporter(); // stdout holds the plan
        const hfConfig = megatronConfig(o);
        const dir = hfConfig ? resolve(model!) : resolve(await resolveModel(model ?? DEFAULT_MODEL, { revision: o.revision }));
        const awq = awqChoice(format, o.awq);
        const needs = needsActivationStats(format, kvCacheMode(o.kvCache)) || awq !== 'none';
        const samples = o.calib || (needs && !o.stats) ? (await calibrationData(o, hfConfig ?? dir, rep)).samples : undefined;
        await printWorkPlan({
          model: dir, hfConfig, format: format.name, out: o.out, work: o.work, kvCache: kvCacheMode(o.kvCache), exclude: o.exclude,
          maxShardSize: o.maxShardSize, awq, stats: o.stats, samples, samplesPerTask: o.calibPerTask,
        });
        return;
      }
      const needsCalib = needsActivationStats(format, kvCacheMode(o.kvCache)) || awqChoice(format, o.awq) !== 'none';
      const hfConfig = megatronConfig(o);
      if (hfConfig && !model) throw new UsageError('--hf-config needs the Megatron checkpoint folder as the model argument');
      const dir = hfConfig ? resolve(model!) : resolve(await resolveModel(model ?? DEFAULT_MODEL, { revision: o.revision }));
      const base = o.base ? resolve(await resolveModel(o.base, { revision: 'main' })) : undefined;
      if (!base && !hfConfig && (await isEagleDraftDir(dir).catch(() => false))) throw new UsageError(`${dir} is an EAGLE draft: name the model it drafts for with --base TARGET`);
      const r = await planExport(dir, format.name, {
        base, hfConfig, out: o.out, kvCache: kvCacheMode(o.kvCache), maxShardSize: o.maxShardSize, exclude: o.exclude, workers: o.workers,
        calibration: needsCalib && !o.stats ? { samples: o.calibSamples, seqLen: o.calibSeqLen, awq: awqChoice(format, o.awq) !== 'none' } : undefined,
      });
      process.stdout.write((o.json ? JSON.stringify(r, null, 2) : formatPlan(r)) + '\n');
    });

  program
    .command('calibrate')
    .description("run the model's own forward pass over calibration data and write the activation statistics `quantize --stats` reads")
    .argument('<model>', 'model folder or Hugging Face repo id')
    .option('--revision <rev>', 'Hub revision', 'main')
    .option('--calib <file>', 'calibration data: .txt, .jsonl, .parquet, .json token ids, or hf://datasets/ORG/NAME[@REV][?config=C&split=S&field=F]; default: the bundled text for the bundled model, else ModelOpt\'s default mix from the Hub')
    .requiredOption('-o, --out <stats.safetensors>', 'statistics file to write')
    .option('--calib-samples <n>', 'calibration samples', intOption('--calib-samples'), DEFAULT_CALIB_SAMPLES)
    .option('--calib-seq-len <n>', 'tokens per calibration sample', intOption('--calib-seq-len'), DEFAULT_CALIB_SEQ_LEN)
    .addOption(new Option('-f, --format <format>', 'an AWQ format: also run its AWQ search and write each linear\'s pre_quant_scale').choices([...FORMAT_NAMES]))
    .addOption(awqOption())
    .option('--hf-config <dir>', 'the model is a Megatron-Core torch_dist checkpoint: read it with this Hugging Face model folder\'s config.json and tokenizer')
    .option('--json', 'one JSON object per line on stdout')
    .action(async (modelDir: string, o: Record<string, any>) => {
      const rep = new Reporter(outputMode(o.json));
      const format = o.format ? formatSpec(o.format) : undefined;
      if (!format && o.awq !== undefined) throw new UsageError('--awq needs --format (the AWQ format whose quantization the search uses)');
      const awq = format ? awqChoice(format, o.awq) : 'none';
      const hfConfig = megatronConfig(o);
      const dir = hfConfig ? resolve(modelDir) : resolve(await resolveModel(modelDir, { revision: o.revision }));
      const guarded = sourceInputs(dir);
      if (hfConfig) guarded.push({ what: 'the --hf-config model folder', path: hfConfig, noWritesInside: true });
      if (!o.calib) guarded.push({ what: 'the bundled calibration text', path: DEFAULT_CALIB_TEXT });
      else if (!o.calib.startsWith('hf://')) guarded.push({ what: 'the --calib file', path: resolve(o.calib) });
      await refuseDestructiveOutput(o.out, guarded, '-o');
      const opened = await openModel(dir, { hfConfig });
      const layers = opened.layers.length;
      await opened.close();
      const { samples } = await calibrationData(o, hfConfig ?? dir, rep);
      const tokens = samples.reduce((a, s) => a + s.length, 0);
      const started = Date.now();
      rep.startBar('calibrate', layers + 1, 'items');
      const stats = await calibrateModel(dir, samples, {
        hfConfig,
        onProgress: (p) => reportCalibrated(rep, p),
        awq: format && awq !== 'none' ? { format, algorithm: awq } : undefined,
      });
      rep.stopBars();
      await writeStats(resolve(o.out), stats);
      const secs = (Date.now() - started) / 1000;
      rep.event('done', { out: resolve(o.out), samples: samples.length, tokens, seconds: secs, tokens_per_s: tokens / secs });
      rep.info(`wrote ${stats.size} statistics to ${resolve(o.out)} (${samples.length} samples, ${tokens} tokens, ${secs.toFixed(1)} s, ${(tokens / secs).toFixed(0)} tokens/s)`);
    });

  program
    .command('eval')
    .description('perplexity of a model or an export on a text (exports run as engines run them: dequantized weights, quantized activations)')
    .argument('<model-or-export-dir>')
    .requiredOption('--text <file>', 'text file, or a .json of token-id arrays used as given (no BOS)')
    .option('--max-windows <n>', 'score only the first N windows of 512 tokens', intOption('--max-windows'))
    .option('--json', 'print the result as JSON')
    .action(async (dir: string, o: { text: string; maxWindows?: number; json?: boolean }) => {
      const r = await perplexity(resolve(dir), resolve(o.text), { maxWindows: o.maxWindows });
      if (o.json) process.stdout.write(JSON.stringify(r) + '\n');
      else process.stdout.write(`perplexity ${r.perplexity.toFixed(4)}\n(${r.tokens} tokens in ${r.windows} windows${r.quantAlgo ? `, ${r.quantAlgo}` : ''}, mean NLL ${r.meanNll.toFixed(6)})\n`);
    });

  program
    .command('report')
    .description('what quantization did: perplexity before/after, KL divergence and top-1 agreement, weight error per linear, output error per layer (HTML + JSON)')
    .argument('<source-dir>')
    .argument('<export-dir>')
    .requiredOption('--text <file>', 'held-out text (or a .json of token-id arrays), scored as `eval` scores it')
    .option('--max-windows <n>', 'score only the first N windows of 512 tokens', intOption('--max-windows'))
    .option('--layer-windows <n>', 'windows for the per-layer output errors', intOption('--layer-windows'), 2)
    .option('--out <report.html>', 'the page to write', 'report.html')
    .option('--json <report.json>', 'also write the numbers as JSON')
    .action(async (source: string, exported: string, o: { text: string; maxWindows?: number; layerWindows: number; out: string; json?: string }) => {
      const src = resolve(source), exp = resolve(exported);
      for (const [what, f] of [['--out', o.out], ['--json', o.json]] as const) {
        if (!f) continue;
        const p = resolve(f);
        for (const dir of [src, exp]) {
          if (p === dir || p.startsWith(dir + '/')) throw new UsageError(`${what} ${f} is inside ${dir}: the report is never written into a model or an export`);
        }
      }
      const r = await qualityReport(src, exp, { text: resolve(o.text), maxWindows: o.maxWindows, layerWindows: o.layerWindows });
      await writeAtomically(resolve(o.out), reportHtml(r));
      if (o.json) await writeAtomically(resolve(o.json), JSON.stringify(r, null, 2) + '\n');
      for (const line of reportSummary(r)) process.stdout.write(line + '\n');
      process.stdout.write(`wrote ${resolve(o.out)}${o.json ? ` and ${resolve(o.json)}` : ''}\n`);
    });

  program
    .command('verify')
    .description('check an export against what vLLM, SGLang and TensorRT-LLM require when they load it')
    .argument('<export-dir>')
    .addOption(new Option('--engine <engine>', "check one engine's loading conditions only; exit 1 when it will not load the export").choices(Object.keys(ENGINE_OPTION)))
    .option('--json', 'print the report as JSON')
    .action(async (dir: string, o: { json?: boolean; engine?: keyof typeof ENGINE_OPTION }) => {
      const r = await verifyExport(resolve(dir));
      const engines = o.engine ? r.engines.filter((e) => e.engine === ENGINE_OPTION[o.engine!]) : r.engines;
      if (o.json) process.stdout.write(JSON.stringify({ ...r, engines }, null, 2) + '\n');
      else {
        process.stdout.write(`${r.dir}: quant_algo ${r.quantAlgo ?? '(none)'}, ${r.quantizedModules} quantized linears${r.medusa ? `, Medusa: ${r.medusa.heads} heads of ${r.medusa.resBlocks} ResBlocks, ${r.medusa.quantized} of ${r.medusa.linears} head linears quantized` : ''}${r.eagle ? `, EAGLE draft: ${r.eagle.layers} layer(s), ${r.eagle.quantized} of ${r.eagle.linears} linears quantized${r.eagle.aux.length ? `, reads target layers ${r.eagle.aux.join(', ')}` : ''}` : ''}\n`);
        for (const n of r.notes) process.stdout.write(`note: ${n}\n`);
        for (const e of engines) {
          process.stdout.write(`${e.loads ? 'loads' : 'does not load'} in ${e.engine}: ${e.note}\n`);
          const more = (e.blockers ?? []).slice(1);
          for (const b of more.slice(0, 5)) process.stdout.write(`  also: ${b}\n`);
          if (more.length > 5) process.stdout.write(`  ... and ${more.length - 5} more (--json lists them all)\n`);
        }
        for (const f of r.failures) process.stdout.write(`FAIL: ${f}\n`);
        process.stdout.write(r.failures.length === 0 ? 'OK: all checks passed\n' : `${r.failures.length} check(s) failed\n`);
      }
      // the checklist applies to every engine; with --engine, that engine must also load it
      if (r.failures.length > 0 || (o.engine && engines.some((e) => !e.loads))) process.exitCode = 1;
    });

  addDistributedCommands(program, calibrationData);
  return program;
}

export async function main(argv: string[]): Promise<number> {
  // a reader that went away (`rxquant ... --json | head`): stop quietly, as Unix tools do
  process.stdout.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code === 'EPIPE') process.exit(0);
  });
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
    return typeof process.exitCode === 'number' ? process.exitCode : 0;
  } catch (e) {
    if (e instanceof CommanderError) {
      // help and version exit 0; usage errors were already printed by commander
      return e.exitCode === 0 ? 0 : 2;
    }
    if (e instanceof RxquantError) {
      process.stderr.write(`error: ${e.message}\n`);
      return e.exitCode;
    }
    const err = e as Error;
    process.stderr.write(`internal error: ${err?.message ?? String(e)} (set RXQUANT_DEBUG=1 for the stack; please report it)\n`);
    if (process.env.RXQUANT_DEBUG) process.stderr.write(`${err?.stack}\n`);
    return 70;
  }
}
