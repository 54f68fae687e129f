/**
 * Scale-out (issue: batch and distributed export on BullMQ): the 8B-shaped checkpoint exported by one
 * process against the same work plan run by 1 and 2 `rxquant worker` processes over a local Redis
 * (the shared folder: this machine's disk), and the calibration's sample groups run one after another
 * against two at once. Every distributed output is compared with the single-process one byte for byte.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { createServer } from 'node:net';
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { synthesize } from './synth.js';
import { evictDir, sameFile, timeShell, timeWithRss } from './util.js';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const CLI = join(ROOT, 'bin', 'rxquant.js');

async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
  const port = (srv.address() as { port: number }).port;
  await new Promise((r) => srv.close(r));
  return port;
}

function startWorkers(n: number, url: string): { procs: ChildProcess[]; logs: string[] } {
  const logs: string[] = [];
  const procs = Array.from({ length: n }, (_, i) => {
    logs.push('');
    const p = spawn('node', [CLI, 'worker', '--redis', url], { stdio: ['ignore', 'pipe', 'pipe'] });
    p.stdout!.on('data', (d) => (logs[i] += d.toString()));
    p.stderr!.on('data', (d) => (logs[i] += d.toString()));
    return p;
  });
  return { procs, logs };
}

async function waitReady(logs: string[]): Promise<void> {
  while (!logs.every((l) => l.includes('worker ready'))) await new Promise((r) => setTimeout(r, 50));
}

async function stop(procs: ChildProcess[]): Promise<void> {
  await Promise.all(procs.map((p) => new Promise((r) => (p.exitCode !== null ? r(undefined) : (p.once('exit', r), p.kill('SIGTERM'))))));
}

/** Seconds each task took by the workers' own account ("done shard-00001 12.3 s"). */
function taskSeconds(logs: string[]): Map<string, number> {
  const out = new Map<string, number>();
  for (const l of logs) for (const m of l.matchAll(/ done (\S+) ([\d.]+) s/g)) out.set(m[1]!, Number(m[2]));
  return out;
}

function sameFolder(a: string, b: string): boolean {
  const fa = readdirSync(a).sort(), fb = readdirSync(b).sort();
  return fa.join() === fb.join() && fa.every((f) => sameFile(join(a, f), join(b, f)));
}

export async function benchDistributed(dataDir: string, layers = 5, format = 'fp8_pb_wo'): Promise<string[]> {
  const model = join(dataDir, `llama8b-${layers}`);
  const { stats } = await synthesize(model, layers);
  const rows: string[] = [];
  const ref = join(dataDir, 'out-dist-ref');
  const redisDir = mkdtempSync(join(tmpdir(), 'rxq-bench-redis-'));
  const port = await freePort();
  const redis = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--dir', redisDir, '--save', ''], { stdio: 'ignore' });
  const url = `redis://127.0.0.1:${port}`;
  try {
    await new Promise((r) => setTimeout(r, 500));
    evictDir(model);
    const single = timeWithRss(`node ${CLI} quantize ${model} -f ${format} --stats ${stats} --max-shard-size 1GB -o ${ref} --overwrite`);
    rows.push(`${format} export of the ${layers}-layer 8B-shaped checkpoint (4.3 GB in, shards of 1 GB), cold cache each run:`, '');
    rows.push('| run | s | tasks | sum of task times s | overhead per task s | output identical |', '|---|---|---|---|---|---|');
    rows.push(`| rxquant quantize, one process | ${single.seconds.toFixed(1)} | - | - | - | (reference) |`);
    for (const n of [1, 2]) {
      const out = join(dataDir, `out-dist-${n}`);
      const work = join(dataDir, `.out-dist-${n}.work`);
      rmSync(out, { recursive: true, force: true });
      rmSync(work, { recursive: true, force: true });
      const plan = join(dataDir, `dist-${n}.plan.json`);
      writeFileSync(plan, execFileSync('node', [CLI, 'plan', model, '-f', format, '--stats', stats, '--max-shard-size', '1GB', '-o', out, '--work', work, '--tasks'], { maxBuffer: 1 << 26 }));
      const { procs, logs } = startWorkers(n, url);
      await waitReady(logs);
      evictDir(model);
      const s = timeShell(`node ${CLI} submit ${plan} --redis ${url} --wait`);
      await stop(procs);
      const times = taskSeconds(logs);
      const sum = [...times.values()].reduce((a, b) => a + b, 0);
      // what the plan adds to the work: the wall time over the single process's, per task (n = 1: tasks in sequence)
      const overhead = n === 1 ? ((s - single.seconds) / times.size).toFixed(2) : '-';
      rows.push(`| ${n} worker process(es) over Redis | ${s.toFixed(1)} | ${times.size} | ${sum.toFixed(1)} | ${overhead} | ${sameFolder(out, ref) ? 'yes' : 'NO'} |`);
      rmSync(out, { recursive: true, force: true });
      rmSync(work, { recursive: true, force: true });
      rmSync(plan, { force: true });
    }
    rmSync(ref, { recursive: true, force: true });
    // calibration fan-out: 4 groups of 2 samples x 128 tokens (nvfp4's max calibration), one process each task
    const ids = join(dataDir, 'dist-ids.json');
    let seed = 3;
    writeFileSync(ids, JSON.stringify(Array.from({ length: 8 }, () => Array.from({ length: 128 }, () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) % 128000))));
    const cplan = join(dataDir, 'dist-calib.plan.json');
    const cwork = join(dataDir, '.out-dist-calib.work');
    const task = (t: string) => `node ${CLI} task ${cplan} ${t}`;
    const timeGroups = (cmd: string) => {
      rmSync(cwork, { recursive: true, force: true });
      writeFileSync(cplan, execFileSync('node', [CLI, 'plan', model, '-f', 'nvfp4', '--calib', ids, '--calib-per-task', '2', '-o', join(dataDir, 'out-dist-calib'), '--work', cwork, '--tasks'], { maxBuffer: 1 << 26 }));
      evictDir(model);
      return timeShell(cmd);
    };
    const seq = timeGroups([0, 1, 2, 3].map((i) => task(`calib-000${i}`)).join(' && '));
    const par = timeGroups(`(${task('calib-0000')} && ${task('calib-0001')}) & (${task('calib-0002')} && ${task('calib-0003')}) & wait`);
    const inProcess = timeShell(`node ${CLI} calibrate ${model} --calib ${ids} -o ${join(dataDir, 'dist-stats.safetensors')}`);
    rmSync(cwork, { recursive: true, force: true });
    rmSync(cplan, { force: true });
    rmSync(join(dataDir, 'dist-stats.safetensors'), { force: true });
    rows.push('', 'calibration fanned out (nvfp4, 8 samples x 128 tokens in 4 groups of 2, each group a `rxquant task` process reading every layer):', '');
    rows.push('| run | s |', '|---|---|');
    rows.push(`| rxquant calibrate, one process, all 8 samples | ${inProcess.toFixed(1)} |`, `| 4 group tasks one after another | ${seq.toFixed(1)} |`, `| 4 group tasks, two at a time | ${par.toFixed(1)} |`);
  } finally {
    redis.kill('SIGTERM');
    rmSync(redisDir, { recursive: true, force: true });
  }
  return rows;
}
