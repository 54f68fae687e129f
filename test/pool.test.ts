/** The kernel pool's workers: answers reach the right task, errors reach their caller, idle workers let go. */
import { describe, expect, it } from 'vitest';
import { KernelPool } from '../src/kernels/pool.js';
import { runKernel, type KernelTask } from '../src/kernels/tasks.js';
import { f32ToBf16 } from '../src/codecs/float.js';

const K = 256;

/** A scan task over `rows` rows of slot `s` whose values are all `v` except one element `peak`. */
function scan(s: { src: Uint8Array; wasm: boolean }, rows: number, v: number, peak: number): KernelTask {
  const u16 = new Uint16Array(s.src.buffer, s.src.byteOffset, rows * K);
  u16.fill(f32ToBf16(v));
  u16[rows * K - 1] = f32ToBf16(peak);
  return { src: s.src.subarray(0, rows * K * 2), dtype: 'BF16', row0: 0, rows, K, ops: [], wasm: s.wasm, kind: 'scan' };
}

describe('KernelPool with worker threads', () => {
  it('answers many tasks in flight on 2 workers, each with its own result', async () => {
    const pool = new KernelPool(2, 1 << 20, 6);
    try {
      const slots = await Promise.all(Array.from({ length: 6 }, () => pool.acquire(1 << 20)));
      // 6 slots, each running 10 tasks one after another (a slot's data is rewritten per task);
      // sizes differ a lot, so answers come back out of posting order across the two workers
      const results: { peak: number; amax: number | undefined }[] = [];
      await Promise.all(
        slots.map(async (s, j) => {
          for (let t = 0; t < 10; t++) {
            const rows = (j + t) % 3 === 0 ? 2048 : 4;
            const peak = 2 + j * 10 + t; // exact in bf16
            results.push({ peak, amax: (await pool.run(scan(s, rows, 0.5, peak))).amax });
          }
        }),
      );
      expect(results.length).toBe(60);
      for (const { peak, amax } of results) expect(amax).toBe(peak);
    } finally {
      await pool.close();
    }
  });

  it('a task that throws in a worker rejects with its error; the worker serves the next task', async () => {
    const pool = new KernelPool(1, 1 << 20, 2);
    try {
      const s = await pool.acquire(1 << 20);
      const bad = { ...scan(s, 4, 1, 2), wasm: false, dtype: 'I32' } as unknown as KernelTask;
      await expect(pool.run(bad)).rejects.toThrow(/dtype I32 is not a float dtype/);
      expect((await pool.run(scan(s, 4, 1, 3))).amax).toBe(3);
      // a task that cannot be sent at all (a function in it) fails alone, and the next one still gets its own answer
      await expect(pool.run({ ...scan(s, 4, 1, 2), ops: [() => 0] } as unknown as KernelTask)).rejects.toThrow(/could not be cloned/);
      expect((await pool.run(scan(s, 4, 1, 4))).amax).toBe(4);
    } finally {
      await pool.close();
    }
  });

  it('after an idle pause (the worker ends its serve call) the next task starts a new one', async () => {
    const pool = new KernelPool(2, 1 << 20, 2);
    try {
      const s = await pool.acquire(1 << 20);
      expect((await pool.run(scan(s, 4, 1, 5))).amax).toBe(5);
      await new Promise((r) => setTimeout(r, 1200)); // > the 500 ms idle limit
      expect((await pool.run(scan(s, 4, 1, 6))).amax).toBe(6);
      const inline = runKernel(scan(s, 4, 1, 7));
      expect((await pool.run(scan(s, 4, 1, 7))).amax).toBe(inline.amax);
    } finally {
      await pool.close();
    }
  });
});
