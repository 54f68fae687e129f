/**
 * Kernel throughput per core, as a ratio to a memcpy of the same bytes measured in the same run, and
 * the same kernels on 1 and 2 worker threads (slots in the shared WebAssembly memory, offsets only).
 * Input: realistic bf16 weights, 16 MiB per task; GB/s = bytes of bf16 input per second.
 */
import { runKernel, type KernelTask } from '../src/kernels/tasks.js';
import { KernelPool, type Slot } from '../src/kernels/pool.js';
import { compileKernels, createSharedMemory, instantiate, WASM_RESERVED } from '../src/kernels/wasm.js';
import { median, GB } from './util.js';
import { chunkTask } from '../src/kernels/chunk-task.js';

const CHUNK = 16 * 2 ** 20;
const K = 8192;
const ROWS = CHUNK / (K * 2); // 1024 rows of 8192
/** Tasks per timing of a pool (512 MiB: ~50 ms on 2 workers for the slower kernels) and timed 1-vs-2 pairs. */
const TASKS = 32;
const PAIRS = 7;

function fill(u16: Uint16Array, seed: number) {
  const f = new Float32Array(1);
  const u = new Uint32Array(f.buffer);
  let s = seed;
  for (let i = 0; i < u16.length; i++) {
    s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0;
    const a = (s & 0xff) + ((s >>> 8) & 0xff) + ((s >>> 16) & 0xff) + (s >>> 24) - 510;
    f[0] = (a / 147.8) * 0.02 * ((s & 0x3ff) === 7 ? 40 : 1);
    u16[i] = (u[0]! + 0x7fff + ((u[0]! >>> 16) & 1)) >>> 16;
  }
}

type Kind = KernelTask['kind'];
const KINDS: Kind[] = ['scan', 'fp8', 'fp8_block', 'nvfp4', 'int4'];

function task(kind: Kind, slot: Slot): KernelTask {
  const base = { src: slot.src.subarray(0, ROWS * K * 2), dtype: 'BF16' as const, row0: 0, rows: ROWS, K, ops: [] };
  if (kind === 'scan') return { ...base, wasm: slot.wasm, kind };
  return chunkTask(kind, slot, base, kind === 'fp8' ? 0.8 / 448 : 0.8 / 2688).task;
}

async function timeIt(f: () => unknown, reps = 5, warmups = 1): Promise<number> {
  for (let i = 0; i < warmups; i++) await f();
  const ts: number[] = [];
  for (let i = 0; i < reps; i++) {
    const t = performance.now();
    await f();
    ts.push((performance.now() - t) / 1000);
  }
  return median(ts);
}

export async function benchKernels(): Promise<string[]> {
  // one core: kernels on this thread over a shared memory
  const mem = createSharedMemory(CHUNK * 3 + 2 * 2 ** 20);
  const k = instantiate(await compileKernels(), mem);
  const slot: Slot = {
    src: new Uint8Array(mem.buffer, WASM_RESERVED, CHUNK),
    codes: new Uint8Array(mem.buffer, WASM_RESERVED + CHUNK, CHUNK / 2),
    packed: new Uint8Array(mem.buffer, WASM_RESERVED + CHUNK * 1.5, CHUNK / 4),
    scales: new Uint8Array(mem.buffer, WASM_RESERVED + CHUNK * 2, CHUNK / 8),
    lut: new Uint8Array(mem.buffer, WASM_RESERVED + CHUNK * 2.5, 65536),
    wasm: true,
  };
  fill(new Uint16Array(slot.src.buffer, slot.src.byteOffset, CHUNK / 2), 7);
  const dst = Buffer.alloc(CHUNK);
  const srcBuf = Buffer.from(slot.src.slice());
  const memcpy = await timeIt(() => srcBuf.copy(dst), 9);
  const memGBs = CHUNK / memcpy / GB;
  const rows = [
    `memcpy of 16 MiB: ${memGBs.toFixed(1)} GB/s (same run)`,
    '',
    `| kernel | 1 core GB/s | x memcpy | 1 worker GB/s (${TASKS} tasks) | 2 workers GB/s | 2 vs 1, median of ${PAIRS} alternating pairs (range) |`,
    '|---|---|---|---|---|---|',
  ];
  const pools = [new KernelPool(1, CHUNK, 4), new KernelPool(2, CHUNK, 4)];
  const slots: Slot[][] = [];
  for (const p of pools) {
    const s = await Promise.all([0, 1, 2, 3].map(() => p.acquire(CHUNK)));
    for (const x of s) fill(new Uint16Array(x.src.buffer, x.src.byteOffset, CHUNK / 2), 7);
    slots.push(s);
  }
  for (const kind of KINDS) {
    // 8 warm-ups: V8 optimizes each kernel, and the FP8 kernel times its two methods on its first chunks (tasks.ts)
    const one = await timeIt(() => runKernel(task(kind, slot), k), 5, 8);
    // TASKS tasks per timing, 4 in flight at all times (each slot sends its next task as soon as its
    // last one returns: no barrier between rounds), after warm-ups that let V8 finish optimizing
    // the wasm in each worker
    const rounds = (p: KernelPool, ss: Slot[]) =>
      Promise.all(ss.map(async (s) => { for (let r = 0; r < TASKS / ss.length; r++) await p.run(task(kind, s)); }));
    // 1 and 2 workers timed in alternation, 5 pairs: the ratio is the median of the pairs' ratios,
    // so a neighbour's burst on this shared machine disturbs one pair, not one side of every pair
    for (let i = 0; i < pools.length; i++) for (let r = 0; r < 3; r++) await rounds(pools[i]!, slots[i]!);
    const t1: number[] = [], t2: number[] = [], ratios: number[] = [];
    for (let r = 0; r < PAIRS; r++) {
      t1.push(await timeIt(() => rounds(pools[0]!, slots[0]!), 1, 0));
      t2.push(await timeIt(() => rounds(pools[1]!, slots[1]!), 1, 0));
      ratios.push(t1[r]! / t2[r]!);
    }
    const g = (s: number, bytes = CHUNK) => (bytes / s / GB).toFixed(2);
    rows.push(`| ${kind} | ${g(one)} | ${(CHUNK / one / GB / memGBs).toFixed(3)} | ${g(median(t1), TASKS * CHUNK)} | ${g(median(t2), TASKS * CHUNK)} | ${median(ratios).toFixed(2)}x (${Math.min(...ratios).toFixed(2)}-${Math.max(...ratios).toFixed(2)}) |`);
  }
  for (const p of pools) await p.close();
  // the two exact FP8 per-tensor kernels on this core; the rows above use the one each thread picked
  // after timing both on its first chunks (src/kernels/tasks.ts)
  const given = process.env.RXQUANT_FP8_KERNEL;
  for (const method of ['table', 'arith'] as const) {
    process.env.RXQUANT_FP8_KERNEL = method;
    const t = await timeIt(() => runKernel(task('fp8', slot), k), 9);
    rows.push(`| fp8 by ${method === 'table' ? '64K table (lut16)' : 'arithmetic (fp8_scaled)'}, 1 core | ${(CHUNK / t / GB).toFixed(2)} | ${(CHUNK / t / GB / memGBs).toFixed(3)} | | | |`);
  }
  if (given === undefined) delete process.env.RXQUANT_FP8_KERNEL;
  else process.env.RXQUANT_FP8_KERNEL = given;
  return rows;
}

if (process.argv[1]?.endsWith('kernels.js')) process.stdout.write((await benchKernels()).join('\n') + '\n');
