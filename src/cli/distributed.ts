/**
 * The commands that spread an export over processes and machines: `task` (one task of a work plan,
 * or all of them in order), `submit` / `worker` / `status` (BullMQ on Redis), `batch` (many exports).
 * The plan itself comes from `rxquant plan ... --tasks` (main.ts).
 */
import { Command } from 'commander';
import { mkdir, readFile } from 'node:fs/promises';
import { writeAtomically } from '../report.js';
import { dirname, join, resolve } from 'node:path';
import { UsageError } from '../errors.js';
import { createWorkPlan, loadWorkPlan, runAll, runTask, workPlanJson, type WorkPlan, type WorkPlanOptions } from '../distributed/work.js';
import { formatSpec, kvCacheMode, needsActivationStats } from '../export/formats.js';
import type { AwqAlgorithm } from '../calibration/awq-layer.js';
import { outputMode, Reporter } from './progress.js';

/**
 * BullMQ and ioredis, loaded only by the commands that talk to Redis: importing them costs every
 * other command ~30 MB of memory and ~0.2 s of start-up.
 */
const queue = () => import('../distributed/queue.js');

/** Loads the calibration samples a plan or batch job asks for (main.ts's loader: --calib, or the defaults). */
export type SamplesLoader = (o: Record<string, any>, modelDir: string, rep: Reporter) => Promise<{ samples: number[][]; source: string }>;

function intArg(name: string) {
  return (v: string) => {
    const n = Number(v);
    if (!Number.isSafeInteger(n) || n < 1) throw new UsageError(`${name} must be a positive integer, got "${v}"`);
    return n;
  };
}

/** Messages on stderr only, for commands whose stdout is data (the work plan). */
export class StderrReporter extends Reporter {
  constructor() {
    super('quiet');
  }
  override info(line: string): void {
    process.stderr.write(line + '\n');
  }
  override warn(line: string): void {
    process.stderr.write(`warning: ${line}\n`);
  }
  override event(): void {}
}

/** Writes a work plan where every worker can read it, atomically. */
async function savePlan(p: WorkPlan, path: string): Promise<void> {
  await mkdir(dirname(path), { recursive: true });
  await writeAtomically(path, workPlanJson(p));
}

export function addDistributedCommands(program: Command, samplesFor: SamplesLoader): void {
  program
    .command('task')
    .description('run one task of a work plan (from `rxquant plan ... --tasks`) against its shared folder; does nothing if its result is already there')
    .argument('<plan.json>')
    .argument('[task-id]', 'the task (calib-0000, merge, shard-00001, assemble); --all: every task in order')
    .option('--all', 'run every task of the plan in order, here')
    .option('--workers <n>', 'kernel worker threads', intArg('--workers'))
    .option('--json', 'one JSON object per task on stdout')
    .action(async (planFile: string, id: string | undefined, o: { all?: boolean; workers?: number; json?: boolean }) => {
      const rep = new Reporter(outputMode(o.json));
      const p = await loadWorkPlan(resolve(planFile));
      const say = (r: { task: string; skipped: boolean; seconds: number }) => {
        rep.event('task', { task: r.task, skipped: r.skipped, seconds: r.seconds });
        rep.info(`${r.task}: ${r.skipped ? 'already done' : `done in ${r.seconds.toFixed(1)} s`}`);
      };
      if (o.all) await runAll(p, say, { workers: o.workers });
      else if (!id) throw new UsageError('name the task to run, or --all');
      else say(await runTask(p, id, { workers: o.workers }));
    });

  program
    .command('submit')
    .description('enqueue a work plan on BullMQ (Redis) for `rxquant worker` processes; submitting it again adds nothing')
    .argument('<plan.json>', 'the plan, at a path every worker can read')
    .requiredOption('--redis <url>', 'redis://HOST:PORT[/DB]')
    .option('--wait', 'return when the export is complete (exit 0) or a task has failed for good (exit 1, with its reason)')
    .option('--attempts <n>', 'tries per task, with exponential backoff from 1 s', intArg('--attempts'), 3)
    .option('--json', 'one JSON object per line on stdout')
    .action(async (planFile: string, o: { redis: string; wait?: boolean; attempts: number; json?: boolean }) => {
      const rep = new Reporter(outputMode(o.json));
      const { submit, waitForPlan } = await queue();
      const p = await submit(planFile, o.redis, { attempts: o.attempts });
      rep.info(`submitted ${p.tasks.length} tasks for ${p.out}`);
      rep.event('submitted', { tasks: p.tasks.length, out: p.out });
      if (!o.wait) return;
      let last = '';
      await waitForPlan(planFile, o.redis, (states) => {
        const doneCount = states.filter((s) => s.state === 'completed').length;
        const line = `${doneCount}/${states.length} tasks done`;
        if (line !== last) {
          rep.info(line);
          rep.event('progress', { done: doneCount, tasks: states.length });
          last = line;
        }
      });
      rep.info(`wrote ${p.out}`);
      rep.event('done', { out: p.out });
    });

  program
    .command('worker')
    .description('run work-plan tasks from BullMQ (Redis) until stopped (Ctrl-C / SIGTERM: the running task finishes first)')
    .requiredOption('--redis <url>', 'redis://HOST:PORT[/DB]')
    .option('--concurrency <n>', 'tasks at once in this process', intArg('--concurrency'), 1)
    .option('--lock-ms <n>', 'task lock duration: a killed worker\'s task is taken over after about this long', intArg('--lock-ms'), 30_000)
    .option('--workers <n>', 'kernel worker threads per task', intArg('--workers'))
    .action(async (o: { redis: string; concurrency: number; lockMs: number; workers?: number }) => {
      const log = (s: string) => process.stdout.write(`${new Date().toISOString()} ${s}\n`);
      const { startWorker } = await queue();
      const worker = startWorker(o.redis, {
        concurrency: o.concurrency,
        lockMs: o.lockMs,
        workers: o.workers,
        onStart: (t) => log(`start ${t}`),
        onDone: (r) => log(`${r.skipped ? 'already done' : 'done'} ${r.task}${r.skipped ? '' : ` ${r.seconds.toFixed(1)} s`}`),
        onFailed: (t, why) => log(`failed ${t}: ${why}`),
      });
      await worker.waitUntilReady();
      log(`worker ready (concurrency ${o.concurrency})`);
      await new Promise<void>((r) => {
        process.once('SIGINT', r);
        process.once('SIGTERM', r);
      });
      log('stopping: waiting for running tasks');
      await worker.close();
    });

  program
    .command('status')
    .description("a submitted work plan's tasks and their states")
    .argument('<plan.json>')
    .requiredOption('--redis <url>', 'redis://HOST:PORT[/DB]')
    .option('--json', 'print the states as JSON')
    .action(async (planFile: string, o: { redis: string; json?: boolean }) => {
      const states = await (await queue()).planStatus(planFile, o.redis);
      if (o.json) process.stdout.write(JSON.stringify(states, null, 2) + '\n');
      else {
        const doneCount = states.filter((s) => s.state === 'completed').length;
        process.stdout.write(`${doneCount}/${states.length} tasks completed\n`);
        for (const s of states) process.stdout.write(`  ${s.task.padEnd(12)} ${s.state}${s.attemptsMade > 1 ? ` (${s.attemptsMade} attempts)` : ''}${s.failedReason ? `: ${s.failedReason}` : ''}\n`);
      }
    });

  program
    .command('batch')
    .description('many exports from a list of jobs (model x format x options): one work plan each, submitted to Redis, or run here one after another')
    .argument('<jobs.json>', '[{"model": DIR, "format": F, "out": DIR, "calib"?: FILE, "stats"?: FILE, "kv_cache"?, "exclude"?, "max_shard_size"?, "calib_samples"?, "calib_seq_len"?, "awq"?, "work"?}, ...]')
    .option('--redis <url>', 'submit to BullMQ instead of running here')
    .option('--wait', 'with --redis: return when every export is complete')
    .option('--json', 'one JSON object per line on stdout')
    .action(async (jobsFile: string, o: { redis?: string; wait?: boolean; json?: boolean }) => {
      const rep = new Reporter(outputMode(o.json));
      let jobs: Record<string, any>[];
      try {
        jobs = JSON.parse(await readFile(resolve(jobsFile), 'utf8'));
      } catch (e) {
        throw new UsageError(`${jobsFile}: not a JSON list of jobs (${(e as Error).message})`);
      }
      if (!Array.isArray(jobs) || jobs.length === 0) throw new UsageError(`${jobsFile}: expected a non-empty JSON list of jobs`);
      const known = new Set(['model', 'format', 'out', 'calib', 'stats', 'kv_cache', 'exclude', 'max_shard_size', 'calib_samples', 'calib_seq_len', 'awq', 'work']);
      // every job checked and planned before any runs
      const plans: { path: string; plan: WorkPlan }[] = [];
      for (const [i, j] of jobs.entries()) {
        if (!j || typeof j !== 'object' || Array.isArray(j)) throw new UsageError(`${jobsFile}: job ${i} is not an object`);
        const bad = Object.keys(j).find((k) => !known.has(k));
        if (bad) throw new UsageError(`${jobsFile}: job ${i}: unknown field "${bad}" (known: ${[...known].join(', ')})`);
        for (const k of ['model', 'format', 'out']) if (typeof j[k] !== 'string') throw new UsageError(`${jobsFile}: job ${i}: "${k}" is required`);
        formatSpec(j.format);
        kvCacheMode(j.kv_cache ?? 'fp8_cast');
      }
      for (const [i, j] of jobs.entries()) {
        const format = formatSpec(j.format);
        const kvCache = kvCacheMode(j.kv_cache ?? 'fp8_cast');
        const needs = needsActivationStats(format, kvCache) || (format.awq && j.awq !== 'none');
        const samples = j.calib || (needs && !j.stats) ? (await samplesFor({ calib: j.calib, calibSamples: j.calib_samples ?? 128, calibSeqLen: j.calib_seq_len ?? 512 }, resolve(j.model), rep)).samples : undefined;
        const opts: WorkPlanOptions = {
          model: resolve(j.model),
          format: format.name,
          out: resolve(j.out),
          kvCache,
          ...(j.work ? { work: resolve(j.work) } : {}),
          ...(j.exclude ? { exclude: j.exclude } : {}),
          ...(j.max_shard_size ? { maxShardSize: String(j.max_shard_size) } : {}),
          ...(j.awq ? { awq: j.awq as AwqAlgorithm } : {}),
          ...(j.stats ? { stats: resolve(j.stats) } : {}),
          ...(samples ? { samples } : {}),
        };
        const plan = await createWorkPlan(opts);
        const path = join(plan.work, `${plan.fingerprint}.plan.json`);
        await savePlan(plan, path);
        plans.push({ path, plan });
        rep.info(`job ${i}: ${plan.model} -> ${plan.out} (${plan.format}, ${plan.tasks.length} tasks; plan ${path})`);
        rep.event('planned', { job: i, plan: path, tasks: plan.tasks.length, out: plan.out });
      }
      if (o.redis) {
        const { submit, waitForPlan } = await queue();
        for (const { path } of plans) await submit(path, o.redis);
        rep.info(`submitted ${plans.length} plan(s)`);
        if (o.wait) for (const { path, plan } of plans) {
          await waitForPlan(path, o.redis);
          rep.info(`wrote ${plan.out}`);
          rep.event('done', { out: plan.out });
        }
        return;
      }
      for (const { plan } of plans) {
        await runAll(plan, (r) => rep.event('task', { out: plan.out, task: r.task, skipped: r.skipped, seconds: r.seconds }));
        rep.info(`wrote ${plan.out}`);
        rep.event('done', { out: plan.out });
      }
    });
}

/** `rxquant plan ... --tasks`: the work plan as JSON on stdout (main.ts's plan command calls it). */
export async function printWorkPlan(o: WorkPlanOptions): Promise<void> {
  process.stdout.write(workPlanJson(await createWorkPlan(o)));
}
