import { describe, it, expect } from 'vitest';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AlignedFile, StagingPool, PAGE } from '../src/safetensors/aligned-file.js';

/** Deterministic bytes and a shuffled cover of [0, length) by ranges of mixed sizes. */
function scenario(length: number, seed: number) {
  let s = seed;
  const rnd = () => ((s = (s * 1103515245 + 12345) >>> 0) / 2 ** 32);
  const bytes = new Uint8Array(length).map(() => Math.floor(rnd() * 256));
  const ranges: [number, number][] = [];
  for (let at = 0; at < length; ) {
    const kind = rnd();
    // tiny (scalars), sub-page, a few pages, large and unaligned
    const n = kind < 0.3 ? 1 + Math.floor(rnd() * 8) : kind < 0.6 ? Math.floor(rnd() * PAGE) + 1 : kind < 0.9 ? Math.floor(rnd() * 5 * PAGE) + 1 : Math.floor(rnd() * 300_000) + 1;
    ranges.push([at, Math.min(length, at + n)]);
    at += n;
  }
  for (let i = ranges.length - 1; i > 0; i--) {
    const j = Math.floor(rnd() * (i + 1));
    [ranges[i], ranges[j]] = [ranges[j]!, ranges[i]!];
  }
  return { bytes, ranges };
}

describe('AlignedFile', () => {
  for (const direct of [true, false]) {
    it(`any ranges in any order give the exact bytes (${direct ? 'O_DIRECT' : 'buffered'})`, async () => {
      const dir = await mkdtemp(join(tmpdir(), 'rxq-aligned-'));
      try {
        const pool = new StagingPool(64 * 1024, 3); // small buffers: many background writes, backpressure
        for (const [length, seed] of [
          [1_234_567, 1],
          [PAGE * 50, 2],
          [PAGE - 3, 3],
          [7, 4],
        ] as const) {
          const { bytes, ranges } = scenario(length, seed);
          const p = join(dir, `f${seed}`);
          const f = await AlignedFile.open(p, length, pool, { direct });
          for (const [a, b] of ranges) {
            const copy = bytes.slice(a, b); // the caller may reuse its buffer once write returns
            await f.write(copy, a);
            copy.fill(0xee);
          }
          for (const [a] of ranges) await f.write(new Uint8Array(0), a); // empty tensors anywhere: no effect
          await f.close();
          expect((await stat(p)).size).toBe(length);
          expect(Buffer.compare(await readFile(p), Buffer.from(bytes))).toBe(0);
        }
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    });
  }

  it('resuming keeps the bytes flushed before the interruption, in pages shared with later writes', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'rxq-aligned-'));
    try {
      const pool = new StagingPool(64 * 1024, 2);
      const length = 200_003;
      const { bytes, ranges } = scenario(length, 9);
      const p = join(dir, 'f');
      const half = Math.floor(ranges.length / 2);
      const first = await AlignedFile.open(p, length, pool);
      for (const [a, b] of ranges.slice(0, half)) await first.write(bytes.subarray(a, b), a);
      await first.flush();
      await first.release(); // the process dies here
      const again = await AlignedFile.open(p, length, pool, { existing: true });
      for (const [a, b] of ranges.slice(half)) await again.write(bytes.subarray(a, b), a);
      await again.close();
      expect(Buffer.compare(await readFile(p), Buffer.from(bytes))).toBe(0);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('rejects a write outside the file', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'rxq-aligned-'));
    try {
      const f = await AlignedFile.open(join(dir, 'f'), 10, new StagingPool(PAGE, 1));
      await expect(f.write(new Uint8Array(4), 8)).rejects.toThrow(/outside the file's 10 bytes/);
      await f.release();
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
