/**
 * A work plan's tasks (distributed/work.ts) on BullMQ over Redis. Two flows, each a parent that
 * runs once its children have completed:
 *   merge    <- calib-0000, calib-0001, ...        (when the plan calibrates)
 *   assemble <- shard-00001, shard-00002, ...
 * The second is added by the worker that completes `merge` (or by `submit` when the plan has no
 * calibration). Job ids are the plan's key and the task id, so a plan submitted twice, or the second
 * flow added twice, adds nothing. Retries with exponential backoff, stalled-job recovery (a worker
 * killed mid-task: its lock expires and another worker takes the task) and reconnecting to a
 * restarted Redis are BullMQ's and ioredis'; the tasks are idempotent, so a task run again by a
 * second worker writes the same bytes or nothing.
 */
import { FlowProducer, Job, Queue, Worker, type ConnectionOptions, type FlowJob } from 'bullmq';
import { resolve } from 'node:path';
import { UsageError, RxquantError } from '../errors.js';
import { loadWorkPlan, planKey, runTask, type TaskRun, type WorkPlan } from './work.js';

export const QUEUE = 'rxquant';

/** A redis:// or rediss:// URL as BullMQ's connection (commands wait for a reconnect instead of failing). */
export function redisConnection(url: string): ConnectionOptions {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new UsageError(`--redis ${url}: not a URL (redis://HOST:PORT[/DB])`);
  }
  if (u.protocol !== 'redis:' && u.protocol !== 'rediss:') throw new UsageError(`--redis ${url}: expected redis://HOST:PORT[/DB] or rediss://...`);
  const db = u.pathname.length > 1 ? Number(u.pathname.slice(1)) : 0;
  if (!Number.isSafeInteger(db) || db < 0) throw new UsageError(`--redis ${url}: the database must be a number`);
  return {
    host: u.hostname || '127.0.0.1',
    port: Number(u.port || 6379),
    ...(u.username ? { username: decodeURIComponent(u.username) } : {}),
    ...(u.password ? { password: decodeURIComponent(u.password) } : {}),
    db,
    ...(u.protocol === 'rediss:' ? { tls: {} } : {}),
    maxRetriesPerRequest: null,
  };
}

interface JobData {
  /** The plan file's absolute path (on storage every worker sees). */
  plan: string;
  task: string;
  attempts: number;
}

export const jobId = (p: WorkPlan, task: string) => `${planKey(p)}-${task}`;

function job(planPath: string, p: WorkPlan, task: string, attempts: number, children?: FlowJob[]): FlowJob {
  return {
    name: task,
    queueName: QUEUE,
    data: { plan: planPath, task, attempts } satisfies JobData,
    opts: { jobId: jobId(p, task), attempts, backoff: { type: 'exponential', delay: 1000 }, removeOnComplete: false, removeOnFail: false, failParentOnFailure: true },
    ...(children ? { children } : {}),
  };
}

function calibrationFlow(planPath: string, p: WorkPlan, attempts: number): FlowJob {
  return job(planPath, p, 'merge', attempts, p.tasks.filter((t) => t.kind === 'calibrate').map((t) => job(planPath, p, t.id, attempts)));
}

function exportFlow(planPath: string, p: WorkPlan, attempts: number): FlowJob {
  return job(planPath, p, 'assemble', attempts, p.tasks.filter((t) => t.kind === 'shard').map((t) => job(planPath, p, t.id, attempts)));
}

async function addFlow(connection: ConnectionOptions, flow: FlowJob): Promise<void> {
  const producer = new FlowProducer({ connection });
  try {
    await producer.add(flow);
  } finally {
    await producer.close();
  }
}

/** Enqueues a plan's first flow (calibration, else the export). Submitting a plan again adds nothing. */
export async function submit(planFile: string, url: string, o: { attempts?: number } = {}): Promise<WorkPlan> {
  const planPath = resolve(planFile);
  const p = await loadWorkPlan(planPath);
  const attempts = o.attempts ?? 3;
  await addFlow(redisConnection(url), p.samples ? calibrationFlow(planPath, p, attempts) : exportFlow(planPath, p, attempts));
  return p;
}

export interface TaskState {
  task: string;
  /** BullMQ's state, or "not queued" (a later flow not added yet). */
  state: string;
  attemptsMade: number;
  failedReason?: string;
}

async function statesOf(p: WorkPlan, queue: Queue): Promise<TaskState[]> {
  const out: TaskState[] = [];
  for (const t of p.tasks) {
    const j = await Job.fromId(queue, jobId(p, t.id));
    if (!j) out.push({ task: t.id, state: 'not queued', attemptsMade: 0 });
    else out.push({ task: t.id, state: await j.getState(), attemptsMade: j.attemptsMade, ...(j.failedReason ? { failedReason: j.failedReason } : {}) });
  }
  return out;
}

export async function planStatus(planFile: string, url: string): Promise<TaskState[]> {
  const p = await loadWorkPlan(resolve(planFile));
  const queue = new Queue(QUEUE, { connection: redisConnection(url) });
  try {
    return await statesOf(p, queue);
  } finally {
    await queue.close();
  }
}

/**
 * Waits until the plan's export is complete (resolves) or a task has failed for good (rejects with
 * its reason), polling the tasks' states over one connection.
 */
export async function waitForPlan(planFile: string, url: string, onState?: (s: TaskState[]) => void, pollMs = 500): Promise<void> {
  const p = await loadWorkPlan(resolve(planFile));
  const queue = new Queue(QUEUE, { connection: redisConnection(url) });
  try {
    for (;;) {
      const states = await statesOf(p, queue);
      onState?.(states);
      const failed = states.find((s) => s.state === 'failed');
      if (failed) throw new RxquantError(`task ${failed.task} failed after ${failed.attemptsMade} attempt(s): ${failed.failedReason ?? 'no reason given'}`);
      if (states.find((s) => s.task === 'assemble')?.state === 'completed') return;
      await new Promise((r) => setTimeout(r, pollMs));
    }
  } finally {
    await queue.close();
  }
}

export interface WorkerOptions {
  concurrency?: number;
  /** How long a task's lock lasts without renewal (BullMQ renews it at half); a killed worker's task is taken over after about this long. Default 30 s. */
  lockMs?: number;
  /** Kernel worker threads per task. */
  workers?: number;
  onStart?: (task: string, plan: string) => void;
  onDone?: (r: TaskRun, plan: string) => void;
  onFailed?: (task: string, reason: string) => void;
}

/** Runs tasks from the queue until closed (`worker.close()`). */
export function startWorker(url: string, o: WorkerOptions = {}): Worker<JobData> {
  const connection = redisConnection(url);
  const plans = new Map<string, WorkPlan>();
  const lockMs = o.lockMs ?? 30_000;
  const worker = new Worker<JobData>(
    QUEUE,
    async (j) => {
      const { plan: planPath, task, attempts } = j.data;
      let p = plans.get(planPath);
      if (!p) plans.set(planPath, (p = await loadWorkPlan(planPath)));
      o.onStart?.(task, planPath);
      const r = await runTask(p, task, { workers: o.workers });
      // calibration merged: the export's flow can go (a second add, after a retry, adds nothing)
      if (task === 'merge') await addFlow(connection, exportFlow(planPath, p, attempts));
      o.onDone?.(r, planPath);
      return r;
    },
    { connection, concurrency: o.concurrency ?? 1, lockDuration: lockMs, stalledInterval: Math.max(500, Math.floor(lockMs / 2)), maxStalledCount: 3 },
  );
  worker.on('failed', (j, err) => {
    if (j) o.onFailed?.(j.data.task, err.message);
  });
  worker.on('error', () => undefined); // connection errors while Redis restarts: ioredis reconnects
  return worker;
}
