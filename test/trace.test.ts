/**
 * RXQUANT_TRACE: an export's time line. The spans it records must account for the work: every byte
 * of the output written once (quantized writes + copied tensors = the shards' data), every quantized
 * weight byte read and run through a kernel in both passes, and no span ending before it starts.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openCheckpoint } from '../src/index.js';
import { ROOT, synthetic } from './helpers.js';

const run = promisify(execFile);
let tmp: string;
beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'rxq-trace-'));
});
afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});

describe('RXQUANT_TRACE', () => {
  it('records spans that account for every output byte and every quantized weight byte', async () => {
    const model = synthetic('llama31');
    const out = join(tmp, 'out'), trace = join(tmp, 'trace.jsonl');
    await run('node', [join(ROOT, 'bin', 'rxquant.js'), 'quantize', model, '-f', 'fp8_pb_wo', '-o', out], { env: { ...process.env, RXQUANT_TRACE: trace } });
    const spans = (await readFile(trace, 'utf8')).trim().split('\n').map((l) => JSON.parse(l) as { kind: string; t0: number; t1: number; bytes: number; what: string });
    expect(spans.every((s) => s.t1 >= s.t0)).toBe(true);
    const sum = (kind: string) => spans.filter((s) => s.kind === kind).reduce((a, s) => a + s.bytes, 0);
    const src = await openCheckpoint(model), ex = await openCheckpoint(out);
    try {
      const outBytes = [...ex.tensors.values()].reduce((a, t) => a + t.byteLength, 0);
      expect(sum('write') + sum('copy-write')).toBe(outBytes);
      const quantized = [...ex.tensors.values()].filter((t) => t.dtype === 'F8_E4M3').map((t) => src.tensors.get(t.name)!.byteLength).reduce((a, b) => a + b, 0);
      expect(quantized).toBeGreaterThan(0);
      for (const kind of ['scan-read', 'scan-kernel', 'read', 'kernel']) expect(sum(kind), kind).toBe(quantized);
      expect(sum('copy-read')).toBe(sum('copy-write'));
    } finally {
      await src.close();
      await ex.close();
    }
  });
});
