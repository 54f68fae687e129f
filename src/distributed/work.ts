/**
 * An export as a list of independent tasks, for several processes or machines over a shared folder
 * (BullMQ drives them: distributed/queue.ts). The work plan is data, decided before any weight is
 * read, and the same input and options always give the same plan bytes:
 *
 *   calib-NNNN  the model's forward pass over a fixed group of calibration samples, writing that
 *               group's statistics. Every sample runs through every layer on its own (the
 *               calibration passes the unquantized output onward), so groups never wait on each
 *               other and their maxima merge exactly. AWQ formats have one group: the search needs
 *               every sample's inputs of a layer at once.
 *   merge       the groups' statistics merged in group order (max for amax; token-weighted mean for
 *               the per-channel mean |x|, which no max-calibrated format's bytes depend on).
 *   shard-NNNNN one output shard: the layers that have tensors in it are read whole and quantized,
 *               and only that shard's tensors are written (the shard layout is planned up front, as
 *               a single-process export plans it).
 *   assemble    the shards, the index and the side files (config.json, hf_quant_config.json,
 *               tokenizer, ...) moved into the output folder at once.
 *
 * Each task writes its result under the plan's work folder in a folder named by the plan's
 * fingerprint and its id, built beside it and renamed into place when complete; a task whose result
 * already exists and matches the plan does nothing. So a task may be run any number of times, by any
 * worker, and the output is byte-identical to `rxquant quantize` with the same options.
 */
import { createHash, randomBytes } from 'node:crypto';
import { copyFile, link, mkdir, readFile, readdir, rename, rm, stat, writeFile, open } from 'node:fs/promises';
import { hostname } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { filter, lastValueFrom, tap } from 'rxjs';
import { readCheckpoint } from '../../operators/readCheckpoint.js';
import { quantize } from '../../operators/quantize.js';
import { pack } from '../../operators/pack.js';
import { writeShards } from '../../operators/writeShards.js';
import { openModel, type SourceModel } from '../model.js';
import { createPlan, type ExportPlan } from '../export/plan.js';
import { formatSpec, needsActivationStats, type FormatName, type KvCacheMode } from '../export/formats.js';
import { loadStats, type Stats } from '../export/stats.js';
import { exportSideFiles } from '../export/side-files.js';
import { unitId } from '../export/units.js';
import { indexJson, planShards, type ShardPlan } from '../safetensors/writer.js';
import { parseSize } from '../safetensors/size.js';
import { calibrateModel, writeStats } from '../calibrate-checkpoint.js';
import { awqSearchFor, exportFingerprint } from '../export-checkpoint.js';
import type { AwqAlgorithm } from '../calibration/awq-layer.js';
import { refuseDestructiveOutput, hubCacheRepoOf, type GuardedInput } from '../util/output-guard.js';
import { OutputError, RxquantError, UsageError } from '../errors.js';

export type WorkTask =
  | { id: string; kind: 'calibrate'; samples: [number, number] }
  | { id: 'merge'; kind: 'merge'; after: string[] }
  | { id: string; kind: 'shard'; file: string; units: string[]; after: string[] }
  | { id: 'assemble'; kind: 'assemble'; after: string[] };

export interface WorkPlan {
  /** The plan format's version. */
  rxquantWorkPlan: 1;
  /** sha256 of rxquant's version, the source's headers, the format, the options and the statistics or samples. */
  fingerprint: string;
  model: string;
  hfConfig: string | null;
  format: FormatName;
  kvCache: KvCacheMode;
  exclude: string[];
  maxShardSize: string;
  awq: AwqAlgorithm;
  out: string;
  /** The shared folder task results go to (under `<fingerprint>/`). */
  work: string;
  /** A statistics file given with --stats (then no calibration tasks). */
  stats: string | null;
  /** Calibration samples (token ids), when the plan calibrates. */
  samples: number[][] | null;
  tasks: WorkTask[];
}

export interface WorkPlanOptions {
  model: string;
  hfConfig?: string;
  format: FormatName;
  out: string;
  /** Default: `.<out name>.rxquant-work` beside the output folder. */
  work?: string;
  kvCache?: KvCacheMode;
  exclude?: string[];
  maxShardSize?: string;
  awq?: AwqAlgorithm;
  stats?: string;
  samples?: number[][];
  /** Calibration samples per task (default 32; AWQ formats: all samples in one task). */
  samplesPerTask?: number;
}

const pad = (n: number, w: number) => String(n).padStart(w, '0');

/** Which unit of the operator chain writes each output tensor: `layer N` by the layer's name prefix, else `rest` (as readCheckpoint groups them). */
function unitOfOutput(model: SourceModel): (name: string) => string {
  const prefixes = model.layers.map((l) => [`${l.prefix}.`, unitId({ kind: 'layer', layer: l.index })] as const);
  return (name) => prefixes.find(([p]) => name.startsWith(p))?.[1] ?? unitId({ kind: 'rest', layer: -1 });
}

/** The export plan and shard layout a work plan's tasks share (from config.json and the headers; no weights read). */
async function exportLayout(p: Pick<WorkPlan, 'model' | 'hfConfig' | 'format' | 'kvCache' | 'exclude' | 'maxShardSize'>, stats?: Stats): Promise<{ model: SourceModel; plan: ExportPlan; shards: ShardPlan }> {
  const model = await openModel(p.model, { hfConfig: p.hfConfig ?? undefined });
  try {
    const plan = createPlan(model, formatSpec(p.format), { kvCache: p.kvCache, exclude: p.exclude, stats, deferStatsCheck: stats === undefined });
    return { model, plan, shards: planShards(plan.outputs, parseSize(p.maxShardSize)) };
  } catch (e) {
    await model.close();
    throw e;
  }
}

export async function createWorkPlan(o: WorkPlanOptions): Promise<WorkPlan> {
  const out = resolve(o.out);
  const work = resolve(o.work ?? join(dirname(out), `.${basename(out)}.rxquant-work`));
  const model = resolve(o.model);
  const inputs: GuardedInput[] = [{ what: 'the source model', path: model, noWritesInside: true }];
  const hub = hubCacheRepoOf(model);
  if (hub) inputs.push({ what: "the source's Hugging Face cache folder", path: hub, noWritesInside: true });
  if (o.hfConfig) inputs.push({ what: 'the --hf-config model folder', path: resolve(o.hfConfig), noWritesInside: true });
  if (o.stats) inputs.push({ what: 'the --stats file', path: resolve(o.stats) });
  await refuseDestructiveOutput(out, inputs);
  await refuseDestructiveOutput(work, [...inputs, { what: 'the output folder', path: out, noWritesInside: true }], '--work');
  if (o.samples && o.stats) throw new UsageError('a work plan calibrates (--calib) or reads statistics (--stats), not both');
  const base = {
    model,
    hfConfig: o.hfConfig ? resolve(o.hfConfig) : null,
    format: o.format,
    kvCache: o.kvCache ?? 'fp8_cast',
    exclude: o.exclude ?? [],
    maxShardSize: o.maxShardSize ?? '10GB',
    awq: o.awq ?? 'lite',
  } as const;
  const format = formatSpec(o.format);
  const awq = format.awq ? base.awq : 'none';
  const stats = o.stats ? await loadStats(resolve(o.stats)) : undefined;
  const { model: opened, shards } = await exportLayout(base);
  let unitsOf: Map<string, string[]>;
  try {
    const unitOf = unitOfOutput(opened);
    unitsOf = new Map(shards.shards.map((s) => [s.file, [...new Set(s.tensors.map((t) => unitOf(t.name)))]]));
    if (!o.samples && needsActivationStats(format, base.kvCache) && !stats) {
      throw new UsageError(`format ${format.name}${base.kvCache === 'fp8' ? ' with --kv-cache fp8' : ''} needs activation statistics: give --calib or --stats`);
    }
  } finally {
    await opened.close();
  }
  const fingerprint = await exportFingerprint({
    model,
    hfConfig: base.hfConfig ?? undefined,
    format: o.format,
    out,
    kvCache: base.kvCache,
    exclude: base.exclude,
    maxShardSize: base.maxShardSize,
    stats,
    calibration: o.samples,
    awq,
  });
  const tasks: WorkTask[] = [];
  const calib: string[] = [];
  if (o.samples) {
    const n = o.samples.length;
    const per = format.awq && awq !== 'none' ? n : Math.max(1, o.samplesPerTask ?? 32);
    for (let s = 0, i = 0; s < n; s += per, i++) {
      const id = `calib-${pad(i, 4)}`;
      calib.push(id);
      tasks.push({ id, kind: 'calibrate', samples: [s, Math.min(n, s + per)] });
    }
    tasks.push({ id: 'merge', kind: 'merge', after: calib });
  }
  const shardIds: string[] = [];
  shards.shards.forEach((s, i) => {
    const id = `shard-${pad(i + 1, 5)}`;
    shardIds.push(id);
    tasks.push({ id, kind: 'shard', file: s.file, units: unitsOf.get(s.file)!, after: o.samples ? ['merge'] : [] });
  });
  tasks.push({ id: 'assemble', kind: 'assemble', after: shardIds });
  return { rxquantWorkPlan: 1, fingerprint, ...base, awq, out, work, stats: o.stats ? resolve(o.stats) : null, samples: o.samples ?? null, tasks };
}

/** The plan as JSON: fixed key order, one line per task, so equal plans are equal bytes. */
export function workPlanJson(p: WorkPlan): string {
  const { tasks, samples, ...rest } = p;
  const head = JSON.stringify(rest).slice(0, -1);
  return `${head},"samples":${samples ? `[\n${samples.map((s) => JSON.stringify(s)).join(',\n')}\n]` : 'null'},"tasks":[\n${tasks.map((t) => JSON.stringify(t)).join(',\n')}\n]}\n`;
}

export async function loadWorkPlan(path: string): Promise<WorkPlan> {
  let p: WorkPlan;
  try {
    p = JSON.parse(await readFile(path, 'utf8'));
  } catch (e) {
    throw new UsageError(`${path}: not a work plan (${(e as Error).message}); make one with rxquant plan MODEL ... --tasks > plan.json`);
  }
  if (p?.rxquantWorkPlan !== 1 || !Array.isArray(p.tasks) || typeof p.fingerprint !== 'string') {
    throw new UsageError(`${path}: not an rxquant work plan (make one with rxquant plan MODEL ... --tasks > plan.json)`);
  }
  return p;
}

/** Where a task's result lives: `<work>/<fingerprint>/<task id>`. */
export function taskDir(p: WorkPlan, id: string): string {
  return join(p.work, p.fingerprint, id);
}

const MARK = 'rxquant-task.json';

/** The task's result exists, complete (its marker names this plan and task). */
async function done(p: WorkPlan, id: string): Promise<boolean> {
  try {
    const m = JSON.parse(await readFile(join(taskDir(p, id), MARK), 'utf8'));
    return m.fingerprint === p.fingerprint && m.task === id;
  } catch {
    return false;
  }
}

/**
 * Builds a task's result in a folder of this attempt's own (host, pid, random: two workers that run
 * one task at once never share one, on any machine), then renames it into place; if another attempt
 * got there first, this one's is dropped.
 */
async function publish(p: WorkPlan, id: string, build: (dir: string) => Promise<void>): Promise<void> {
  const attempts = join(p.work, p.fingerprint, '.attempts');
  await mkdir(attempts, { recursive: true });
  const dir = join(attempts, `${id}.${hostname()}.${process.pid}.${randomBytes(4).toString('hex')}`);
  try {
    await build(dir);
    await writeFile(join(dir, MARK), JSON.stringify({ fingerprint: p.fingerprint, task: id, host: hostname(), pid: process.pid, finished: new Date().toISOString() }));
    try {
      await rename(dir, taskDir(p, id));
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if ((code === 'ENOTEMPTY' || code === 'EEXIST') && (await done(p, id))) return; // another attempt finished it
      throw e;
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

export interface TaskRun {
  task: string;
  /** The result was already there: nothing was done. */
  skipped: boolean;
  seconds: number;
}

/** Runs one task of the plan (idempotent: see the module comment). */
export async function runTask(p: WorkPlan, id: string, o: { workers?: number } = {}): Promise<TaskRun> {
  const task = p.tasks.find((t) => t.id === id);
  if (!task) throw new UsageError(`no task "${id}" in this plan (tasks: ${p.tasks.map((t) => t.id).join(', ')})`);
  const started = Date.now();
  if (task.kind === 'assemble' ? await assembled(p) : await done(p, id)) return { task: id, skipped: true, seconds: 0 };
  for (const dep of 'after' in task ? task.after : []) {
    if (!(await done(p, dep))) throw new RxquantError(`task ${id} needs ${dep}, whose result is not in ${taskDir(p, dep)} yet`);
  }
  const fault = process.env.RXQUANT_TEST_FAIL_ONCE;
  if (fault && fault.split(',').includes(id)) {
    // fault injection for the tests: this task throws the first time it runs in this work folder
    const marker = join(p.work, p.fingerprint, `.failed-once-${id}`);
    await mkdir(dirname(marker), { recursive: true });
    const first = await writeFile(marker, '', { flag: 'wx' }).then(() => true, () => false);
    if (first) throw new RxquantError(`injected failure of ${id} (RXQUANT_TEST_FAIL_ONCE)`);
  }
  const delay = Number(process.env.RXQUANT_TEST_TASK_DELAY_MS ?? 0);
  if (delay > 0) await new Promise((r) => setTimeout(r, delay));
  switch (task.kind) {
    case 'calibrate':
      await publish(p, id, async (dir) => {
        const [s0, s1] = task.samples;
        const awq = awqSearchFor({ format: p.format, calibration: p.samples ?? undefined, awq: p.awq });
        const stats = await calibrateModel(p.model, p.samples!.slice(s0, s1), { hfConfig: p.hfConfig ?? undefined, ...(awq ? { awq } : {}) });
        await mkdir(dir, { recursive: true });
        await writeStats(join(dir, 'stats.safetensors'), stats);
      });
      break;
    case 'merge':
      await publish(p, id, async (dir) => {
        const parts: { stats: Stats; tokens: number }[] = [];
        for (const c of task.after) {
          const t = p.tasks.find((x) => x.id === c) as Extract<WorkTask, { kind: 'calibrate' }>;
          const tokens = p.samples!.slice(t.samples[0], t.samples[1]).reduce((a, s) => a + s.length, 0);
          parts.push({ stats: await loadStats(join(taskDir(p, c), 'stats.safetensors')), tokens });
        }
        await mkdir(dir, { recursive: true });
        await writeStats(join(dir, 'stats.safetensors'), mergeStats(parts));
      });
      break;
    case 'shard':
      await publish(p, id, (dir) => writeShard(p, task, dir, o.workers));
      break;
    case 'assemble':
      await assemble(p);
      break;
  }
  return { task: id, skipped: false, seconds: (Date.now() - started) / 1000 };
}

/**
 * Statistics of sample groups merged in group order: maxima by max (exact in any order), the
 * per-channel mean |x| weighted by each group's tokens (f64), the rest (an AWQ search's scales,
 * from the one group AWQ formats have) as the first group gives them.
 */
export function mergeStats(parts: { stats: Stats; tokens: number }[]): Stats {
  const out: Stats = new Map();
  const total = parts.reduce((a, p) => a + p.tokens, 0);
  const sums = new Map<string, Float64Array>();
  for (const { stats, tokens } of parts) {
    for (const [k, v] of stats) {
      if (/(_amax|\.input_channel_amax)$/.test(k)) {
        const cur = out.get(k);
        if (!cur) out.set(k, Float32Array.from(v));
        else for (let i = 0; i < v.length; i++) if (v[i]! > cur[i]!) cur[i] = v[i]!;
      } else if (k.endsWith('.input_absmean')) {
        const s = sums.get(k) ?? new Float64Array(v.length);
        for (let i = 0; i < v.length; i++) s[i] = s[i]! + v[i]! * tokens;
        sums.set(k, s);
      } else if (!out.has(k)) out.set(k, v);
    }
  }
  for (const [k, s] of sums) out.set(k, Float32Array.from(s, (x) => x / total));
  return out;
}

/** The statistics the shard tasks quantize with: the merged ones, the plan's --stats file, or none. */
async function planStats(p: WorkPlan): Promise<Stats | undefined> {
  if (p.samples) return loadStats(join(taskDir(p, 'merge'), 'stats.safetensors'));
  if (p.stats) return loadStats(p.stats);
  return undefined;
}

/** One shard: the units with tensors in it through the operator chain, only its tensors written (writeShards' `only`). */
async function writeShard(p: WorkPlan, task: Extract<WorkTask, { kind: 'shard' }>, dir: string, workers?: number): Promise<void> {
  const stats = await planStats(p);
  const units = new Set(task.units);
  const last = await lastValueFrom(
    readCheckpoint(p.model, { hfConfig: p.hfConfig ?? undefined }).pipe(
      // a unit with no tensor in this shard is not read at all
      filter((u) => {
        const keep = units.has(unitId(u));
        if (!keep) u.release();
        return keep;
      }),
      quantize(p.format, { stats, kvCache: p.kvCache, exclude: p.exclude, workers }),
      pack(),
      writeShards(dir, { maxShardSize: p.maxShardSize, only: task.file }),
      tap(() => undefined),
    ),
  );
  if (last.type !== 'done') throw new RxquantError(`shard task ${task.id} ended without completing`);
}

/** The output folder holds this plan's export (every planned file, each shard of its planned size and header). */
async function assembled(p: WorkPlan): Promise<boolean> {
  if (!(await done(p, 'assemble'))) return false;
  try {
    await stat(p.out);
    return true;
  } catch {
    return false;
  }
}

async function linkOrCopy(from: string, to: string): Promise<void> {
  try {
    await link(from, to);
  } catch {
    await copyFile(from, to); // another file system
  }
}

async function sameHeader(path: string, header: Uint8Array): Promise<boolean> {
  const f = await open(path, 'r');
  try {
    const buf = new Uint8Array(header.length);
    await f.read(buf, 0, buf.length, 0);
    return Buffer.compare(buf, header) === 0;
  } finally {
    await f.close();
  }
}

/**
 * The output folder: every shard (hard-linked from its task's folder where the file system allows,
 * else copied), the index (more than one shard), and the side files, built beside the output and
 * renamed into place. An existing output is kept when it is this plan's export already (a worker
 * died after the rename), refused otherwise.
 */
async function assemble(p: WorkPlan): Promise<void> {
  const stats = await planStats(p);
  const { model, plan, shards } = await exportLayout(p, stats);
  try {
    for (const s of shards.shards) {
      const shardTask = p.tasks.find((t) => t.kind === 'shard' && t.file === s.file)!;
      const f = join(taskDir(p, shardTask.id), s.file);
      const st = await stat(f).catch(() => undefined);
      if (!st || st.size !== s.header.length + s.dataLength || !(await sameHeader(f, s.header))) {
        throw new RxquantError(`${f}: not the shard the plan lays out (size or header differ); remove ${taskDir(p, shardTask.id)} and run ${shardTask.id} again`);
      }
    }
    const existing = await readdir(p.out).catch(() => undefined);
    if (existing && existing.length > 0) {
      const ok = await Promise.all(shards.shards.map(async (s) => (await stat(join(p.out, s.file)).catch(() => undefined))?.size === s.header.length + s.dataLength && (await sameHeader(join(p.out, s.file), s.header))));
      if (!ok.every(Boolean)) throw new OutputError(`${p.out}: exists and is not this plan's export; remove it or plan another output folder`);
    } else {
      const tmp = join(dirname(p.out), `.${basename(p.out)}.rxquant-assemble.${hostname()}.${process.pid}`);
      await rm(tmp, { recursive: true, force: true });
      await mkdir(tmp, { recursive: true });
      try {
        for (const s of shards.shards) {
          const shardTask = p.tasks.find((t) => t.kind === 'shard' && t.file === s.file)!;
          await linkOrCopy(join(taskDir(p, shardTask.id), s.file), join(tmp, s.file));
        }
        if (shards.shards.length > 1) await writeFile(join(tmp, 'model.safetensors.index.json'), indexJson(shards));
        for (const f of await exportSideFiles(plan)) await writeFile(join(tmp, f.name), f.content);
        if (existing) await rm(p.out, { recursive: true, force: true }); // an empty folder
        await rename(tmp, p.out);
      } catch (e) {
        await rm(tmp, { recursive: true, force: true });
        throw e;
      }
    }
    await mkdir(taskDir(p, 'assemble'), { recursive: true });
    await writeFile(join(taskDir(p, 'assemble'), MARK), JSON.stringify({ fingerprint: p.fingerprint, task: 'assemble', out: p.out, finished: new Date().toISOString() }));
  } finally {
    await model.close();
  }
}

/** Tasks in an order that runs each after what it needs (the plan lists them so). */
export async function runAll(p: WorkPlan, onTask?: (r: TaskRun) => void, o: { workers?: number } = {}): Promise<void> {
  for (const t of p.tasks) onTask?.(await runTask(p, t.id, o));
}

/** A short id of the plan for queue job ids. */
export function planKey(p: WorkPlan): string {
  return createHash('sha256').update(p.fingerprint).update(p.out).digest('hex').slice(0, 16);
}
