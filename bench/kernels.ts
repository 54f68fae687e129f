/**
 * Kernel throughput per core, as a ratio to a memcpy of the same bytes measured in the same run,
 * and the same kernels on 1 and 2 worker threads (shared-memory slots, offsets only).
 * Input: 64 MiB of realistic bf16 weights ([2048, 16384]); GB/s = bytes of bf16 input per second.
 */
import { runKernel, type KernelTask } from '../src/kernels/tasks.js';
import { KernelPool } from '../src/kernels/pool.js';
import { median, GB } from './util.js';

const N = 2048, K = 16384;

function weights(): Uint8Array {
  const sab = new SharedArrayBuffer(N * K * 2);
  const u16 = new Uint16Array(sab);
  const f = new Float32Array(1);
  const u = new Uint32Array(f.buffer);
  let s = 7;
  for (let i = 0; i < u16.length; i++) {
    s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0;
    const a = (s & 0xff) + ((s >>> 8) & 0xff) + ((s >>> 16) & 0xff) + (s >>> 24) - 510;
    f[0] = (a / 147.8) * 0.02 * ((s & 0x3ff) === 7 ? 40 : 1);
    u16[i] = (u[0]! + 0x7fff + ((u[0]! >>> 16) & 1)) >>> 16;
  }
  return new Uint8Array(sab);
}

type Kind = 'scan' | 'fp8' | 'fp8_block' | 'nvfp4' | 'int4';

function task(kind: Kind, src: Uint8Array, row0: number, rows: number, out: { codes: Uint8Array; scales: Uint8Array }): KernelTask {
  const base = { src: src.subarray(row0 * K * 2, (row0 + rows) * K * 2), dtype: 'BF16' as const, row0, rows, K, ops: [] };
  const codes = out.codes.subarray(row0 * K, (row0 + rows) * K);
  switch (kind) {
    case 'scan': return { ...base, kind };
    case 'fp8': return { ...base, kind, scale: 0.8 / 448, codes };
    case 'fp8_block': return { ...base, kind, codes, scales: new Float32Array(out.scales.buffer, (row0 / 128) * (K / 128) * 4, (rows / 128) * (K / 128)) };
    case 'nvfp4': return { ...base, kind, ws2: 0.8 / 2688, codes, scales: out.scales.subarray((row0 * K) / 16, ((row0 + rows) * K) / 16) };
    case 'int4': return { ...base, kind, codes: new Int8Array(out.codes.buffer, row0 * K, rows * K), scales: new Float32Array(out.scales.buffer, ((row0 * K) / 128) * 4, (rows * K) / 128) };
  }
}

function time(f: () => void, reps = 5): number {
  f();
  const ts: number[] = [];
  for (let i = 0; i < reps; i++) {
    const t = performance.now();
    f();
    ts.push((performance.now() - t) / 1000);
  }
  return median(ts);
}

async function timeAsync(f: () => Promise<unknown>, reps = 5): Promise<number> {
  await f();
  const ts: number[] = [];
  for (let i = 0; i < reps; i++) {
    const t = performance.now();
    await f();
    ts.push((performance.now() - t) / 1000);
  }
  return median(ts);
}

export async function benchKernels(): Promise<string[]> {
  const src = weights();
  const bytes = src.length;
  const out = { codes: new Uint8Array(new SharedArrayBuffer(N * K)), scales: new Uint8Array(new SharedArrayBuffer((N * K) / 4)) };
  const dst = Buffer.alloc(bytes);
  const srcBuf = Buffer.from(src.buffer);
  const memcpy = time(() => srcBuf.copy(dst));
  const memGBs = bytes / memcpy / GB;
  const rows = [`memcpy of ${bytes / 2 ** 20} MiB: ${memGBs.toFixed(1)} GB/s`, '', '| kernel | 1 core GB/s | x memcpy | 1 worker GB/s | 2 workers GB/s | 2 vs 1 |', '|---|---|---|---|---|---|'];
  const kinds: Kind[] = ['scan', 'fp8', 'fp8_block', 'nvfp4', 'int4'];
  const p1 = new KernelPool(1);
  const p2 = new KernelPool(2);
  for (const kind of kinds) {
    const inline = time(() => runKernel(task(kind, src, 0, N, out)), 3);
    // 1 worker: 8 tasks of 256 rows (8 MiB); 2 workers: the same tasks spread over both
    const parts = Array.from({ length: 8 }, (_, i) => i * (N / 8));
    const w1 = await timeAsync(() => Promise.all(parts.map((r) => p1.run(task(kind, src, r, N / 8, out)))), 3);
    const w2 = await timeAsync(() => Promise.all(parts.map((r) => p2.run(task(kind, src, r, N / 8, out)))), 3);
    const g = (s: number) => (bytes / s / GB).toFixed(2);
    rows.push(`| ${kind} | ${g(inline)} | ${(bytes / inline / GB / memGBs).toFixed(3)} | ${g(w1)} | ${g(w2)} | ${(w1 / w2).toFixed(2)}x |`);
  }
  await p1.close();
  await p2.close();
  return rows;
}

if (process.argv[1]?.endsWith('kernels.js')) process.stdout.write((await benchKernels()).join('\n') + '\n');
