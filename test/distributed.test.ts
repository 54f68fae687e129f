/**
 * Exports spread over worker processes through BullMQ on a real Redis (Debian's redis-server, which
 * .ci/run installs; each run here starts its own on a free loopback port, with an append-only file
 * so it can be restarted mid-run). Every distributed export is compared byte for byte with the
 * single-process `rxquant quantize` of the same model, format and options: a calibrated format
 * (nvfp4: calibration fanned out over sample groups) and an AWQ format (int4_awq: one calibration
 * task with the search), with 1, 2 and 3 workers, and with faults: a task that throws once, a worker
 * SIGKILLed in the middle of a task, Redis restarted while tasks run, the same plan submitted twice.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFile, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { promisify } from 'node:util';
import { createConnection, createServer } from 'node:net';
import { mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ROOT, synthetic } from './helpers.js';
import { inputIds } from './reference-forward.js';

const run = promisify(execFile);
const CLI = join(ROOT, 'bin', 'rxquant.js');
const MODEL = synthetic('llama31');
const HAS_REDIS = spawnSync('redis-server', ['--version']).status === 0;
if (!HAS_REDIS) {
  if (process.env.RXQUANT_REQUIRE_REDIS) throw new Error('redis-server is not installed (.ci/run installs it)');
  console.warn('redis-server is not installed: the BullMQ tests are skipped (apt-get install redis-server, or run .ci/run)');
}

let tmp: string;
let ids: string;

async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
  const port = (srv.address() as { port: number }).port;
  await new Promise((r) => srv.close(r));
  return port;
}

/** A redis-server of the test's own: an append-only file (fsync always), so a restart keeps the queue. */
class RedisServer {
  proc?: ChildProcess;
  constructor(
    readonly port: number,
    readonly dir: string,
  ) {}
  get url() {
    return `redis://127.0.0.1:${this.port}`;
  }
  async start(): Promise<void> {
    this.proc = spawn('redis-server', ['--port', String(this.port), '--bind', '127.0.0.1', '--dir', this.dir, '--appendonly', 'yes', '--appendfsync', 'always', '--save', ''], { stdio: 'ignore' });
    for (let i = 0; i < 100; i++) {
      if (await this.ping()) return;
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error(`redis-server on port ${this.port} did not start`);
  }
  private ping(): Promise<boolean> {
    return new Promise((res) => {
      const s = createConnection(this.port, '127.0.0.1');
      s.on('error', () => res(false));
      s.on('connect', () => s.write('PING\r\n'));
      s.on('data', (d) => {
        s.destroy();
        res(d.toString().startsWith('+PONG'));
      });
    });
  }
  async stop(): Promise<void> {
    const p = this.proc;
    if (!p || p.exitCode !== null) return;
    await new Promise((r) => {
      p.once('exit', r);
      p.kill('SIGTERM');
    });
  }
}

class Workers {
  procs: { proc: ChildProcess; log: string }[] = [];
  start(n: number, url: string, env: Record<string, string> = {}): void {
    for (let i = 0; i < n; i++) {
      const proc = spawn('node', [CLI, 'worker', '--redis', url, '--lock-ms', '1500', '--workers', '1'], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
      const w = { proc, log: '' };
      proc.stdout!.on('data', (d) => (w.log += d.toString()));
      proc.stderr!.on('data', (d) => (w.log += d.toString()));
      this.procs.push(w);
    }
  }
  /** Waits until a worker's log has `pattern`; returns that worker. */
  async waitFor(pattern: RegExp, ms = 30_000): Promise<{ proc: ChildProcess; log: string }> {
    const until = Date.now() + ms;
    for (;;) {
      const w = this.procs.find((x) => pattern.test(x.log));
      if (w) return w;
      if (Date.now() > until) throw new Error(`no worker logged ${pattern} in ${ms} ms:\n${this.logs()}`);
      await new Promise((r) => setTimeout(r, 25));
    }
  }
  logs(): string {
    return this.procs.map((w, i) => `--- worker ${i}\n${w.log}`).join('\n');
  }
  async stop(): Promise<void> {
    await Promise.all(
      this.procs.map(
        (w) =>
          new Promise((r) => {
            if (w.proc.exitCode !== null || w.proc.signalCode !== null) return r(undefined);
            w.proc.once('exit', r);
            w.proc.kill('SIGTERM');
            setTimeout(() => w.proc.kill('SIGKILL'), 5000).unref();
          }),
      ),
    );
    this.procs = [];
  }
}

/** Every file of both folders, byte for byte. */
async function expectSameFolder(got: string, want: string): Promise<void> {
  const names = (await readdir(want)).sort();
  expect((await readdir(got)).sort()).toEqual(names);
  for (const n of names) expect(Buffer.compare(await readFile(join(got, n)), await readFile(join(want, n))), n).toBe(0);
}

const SHARD = '300KB'; // two shards of the llama31 model
const references = new Map<string, string>();

beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'rxq-dist-'));
  // calibration token ids: the llama31 reference's two sequences and four more derived from them (six samples)
  const base = await inputIds(join(MODEL, 'reference.safetensors'));
  const samples = [0, 1, 2].flatMap((r) => base.map((s) => s.map((v) => (v * (r + 1) + r) % 512)));
  ids = join(tmp, 'ids.json');
  await writeFile(ids, JSON.stringify(samples));
  for (const format of ['nvfp4', 'int4_awq']) {
    const out = join(tmp, `ref-${format}`);
    await run('node', [CLI, 'quantize', MODEL, '-f', format, '--calib', ids, '--max-shard-size', SHARD, '-o', out]);
    references.set(format, out);
  }
}, 120_000);
afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});

async function workPlan(format: string, out: string, extra: string[] = []): Promise<string> {
  const plan = join(tmp, `${out}.plan.json`);
  const { stdout } = await run('node', [CLI, 'plan', MODEL, '-f', format, '--calib', ids, '--max-shard-size', SHARD, '-o', join(tmp, out), '--tasks', '--calib-per-task', '2', ...extra]);
  await writeFile(plan, stdout);
  return plan;
}

describe('work plans', () => {
  it('are the same bytes for the same input and options; tasks run here (task --all) give the single-process export, and a second run does nothing', async () => {
    const plan = await workPlan('nvfp4', 'local');
    const again = await run('node', [CLI, 'plan', MODEL, '-f', 'nvfp4', '--calib', ids, '--max-shard-size', SHARD, '-o', join(tmp, 'local'), '--tasks', '--calib-per-task', '2']);
    expect(again.stdout).toBe(await readFile(plan, 'utf8'));
    const p = JSON.parse(again.stdout);
    expect(p.tasks.map((t: { id: string }) => t.id)).toEqual(['calib-0000', 'calib-0001', 'calib-0002', 'merge', 'shard-00001', 'shard-00002', 'assemble']);
    expect(p.samples.length).toBe(6);
    await run('node', [CLI, 'task', plan, '--all']);
    await expectSameFolder(join(tmp, 'local'), references.get('nvfp4')!);
    const second = await run('node', [CLI, 'task', plan, '--all']);
    expect(second.stdout.trim().split('\n').every((l) => l.endsWith('already done'))).toBe(true);
  });

  it('batch: jobs checked and planned first, then run here one after another (no Redis), each byte-identical', async () => {
    const jobs = join(tmp, 'jobs.json');
    const outs = [join(tmp, 'batch-nvfp4'), join(tmp, 'batch-awq')];
    await writeFile(jobs, JSON.stringify([
      { model: MODEL, format: 'nvfp4', out: outs[0], calib: ids, max_shard_size: SHARD },
      { model: MODEL, format: 'int4_awq', out: outs[1], calib: ids, max_shard_size: SHARD },
    ]));
    const { stdout } = await run('node', [CLI, 'batch', jobs]);
    expect(stdout).toMatch(/job 1: .* \(int4_awq, 5 tasks; plan /);
    await expectSameFolder(outs[0]!, references.get('nvfp4')!);
    await expectSameFolder(outs[1]!, references.get('int4_awq')!);
    // a typo in a later job stops the batch before the first one runs
    await writeFile(jobs, JSON.stringify([{ model: MODEL, format: 'nvfp4', out: join(tmp, 'never'), calib: ids }, { model: MODEL, format: 'nvfp4', out: join(tmp, 'never2'), calibb: ids }]));
    const bad = await run('node', [CLI, 'batch', jobs]).then(() => 'ok', (e: { code: number; stderr: string }) => `${e.code}: ${e.stderr}`);
    expect(bad).toMatch(/^2: .*job 1: unknown field "calibb"/s);
    expect((await readdir(tmp)).filter((n) => n.includes('never'))).toEqual([]);
  });

  it('refuse what cannot work, before any task runs', async () => {
    const fail = (args: string[]) => run('node', [CLI, ...args]).then(() => 'ok', (e: { code: number; stderr: string }) => `${e.code}: ${e.stderr}`);
    const plan = await workPlan('nvfp4', 'refusals');
    expect(await fail(['task', plan, 'shard-00009'])).toMatch(/^2: .*no task "shard-00009" in this plan/s);
    expect(await fail(['task', plan, 'shard-00001'])).toMatch(/^1: .*task shard-00001 needs merge, whose result is not in/s);
    expect(await fail(['task', ids])).toMatch(/^2: .*not an rxquant work plan/s);
    expect(await fail(['submit', plan, '--redis', 'http://localhost:6379'])).toMatch(/^2: .*expected redis:\/\/HOST:PORT/s);
    expect(await fail(['plan', MODEL, '-f', 'nvfp4', '--calib', ids, '-o', join(tmp, 'w'), '--work', join(MODEL, 'work'), '--tasks'])).toMatch(/^1: error: --work .* lies inside the source model/s);
  });
});

describe.skipIf(!HAS_REDIS)('BullMQ on Redis', () => {
  let redis: RedisServer;
  const workers = new Workers();
  beforeAll(async () => {
    redis = new RedisServer(await freePort(), await mkdtemp(join(tmpdir(), 'rxq-redis-')));
    await redis.start();
  });
  afterAll(async () => {
    await workers.stop();
    await redis?.stop();
    if (redis) await rm(redis.dir, { recursive: true, force: true });
  });

  for (const format of ['nvfp4', 'int4_awq']) {
    for (const n of [1, 2, 3]) {
      it(`${format}, ${n} worker process(es): byte-identical to the single-process export`, async () => {
        const out = `q-${format}-${n}`;
        const plan = await workPlan(format, out);
        workers.start(n, redis.url);
        try {
          await run('node', [CLI, 'submit', plan, '--redis', redis.url, '--wait']);
        } finally {
          await workers.stop();
        }
        await expectSameFolder(join(tmp, out), references.get(format)!);
        const status = await run('node', [CLI, 'status', plan, '--redis', redis.url]);
        expect(status.stdout).toMatch(new RegExp(`^${JSON.parse(await readFile(plan, 'utf8')).tasks.length}/\\d+ tasks completed`));
      }, 60_000);
    }
  }

  it('a task that fails on its last attempt ends submit --wait with exit 1 and the reason', async () => {
    const plan = await workPlan('nvfp4', 'fails');
    workers.start(1, redis.url, { RXQUANT_TEST_FAIL_ONCE: 'shard-00001' });
    try {
      const r = await run('node', [CLI, 'submit', plan, '--redis', redis.url, '--wait', '--attempts', '1']).then(() => 'ok', (e: { code: number; stderr: string }) => `${e.code}: ${e.stderr}`);
      expect(r).toMatch(/^1: .*task shard-00001 failed after 1 attempt\(s\): injected failure of shard-00001/s);
    } finally {
      await workers.stop();
    }
    expect(await readdir(tmp)).not.toContain('fails');
  }, 60_000);

  it('faults: a task that throws once, a worker SIGKILLed mid-task, Redis restarted mid-run, the plan submitted twice; the export is still byte-identical', async () => {
    const plan = await workPlan('nvfp4', 'faults');
    // every task takes at least 1.5 s here, so there is time to kill a worker in one
    workers.start(3, redis.url, { RXQUANT_TEST_FAIL_ONCE: 'shard-00002', RXQUANT_TEST_TASK_DELAY_MS: '1500' });
    const submitOnce = () => run('node', [CLI, 'submit', plan, '--redis', redis.url, '--wait']);
    const both = Promise.all([submitOnce(), submitOnce()]);
    let logs = '';
    try {
      const victim = await workers.waitFor(/start shard-00001/);
      victim.proc.kill('SIGKILL');
      await redis.stop();
      await new Promise((r) => setTimeout(r, 500));
      await redis.start();
      const [a, b] = await both;
      expect(a.stdout).toMatch(/wrote .*faults/);
      expect(b.stdout).toMatch(/wrote .*faults/);
    } catch (e) {
      throw new Error(`${(e as Error).message}\n${workers.logs()}`);
    } finally {
      logs = workers.logs();
      await workers.stop().catch(() => undefined);
    }
    await expectSameFolder(join(tmp, 'faults'), references.get('nvfp4')!);
    // the injected failure was retried; the killed worker's task was finished by another one
    expect(logs).toMatch(/failed shard-00002: injected failure/);
    expect(logs).toMatch(/done shard-00002/);
    expect(logs.match(/start shard-00001/g)!.length).toBeGreaterThanOrEqual(2);
    expect(logs).toMatch(/done shard-00001/);
  }, 120_000);
});
