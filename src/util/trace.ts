/**
 * `RXQUANT_TRACE=FILE`: a time line of an export, for finding where its time goes. Every span of
 * work (a chunk read, a kernel task, a write, a wait for a slot or for the next chunk) is recorded
 * as one JSON line {kind, t0, t1 (ms since the process started), bytes, what}, written to FILE when
 * the process exits. Spans overlap (several chunks are in flight); nothing is recorded, and nothing
 * costs more than a branch, without the variable.
 */
import { writeFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';

export type SpanKind = 'slot-wait' | 'read' | 'scan-read' | 'kernel' | 'scan-kernel' | 'chunk-wait' | 'write' | 'copy-read' | 'copy-write' | 'commit' | 'finish';

const file = process.env.RXQUANT_TRACE;
const lines: string[] = [];
if (file) process.on('exit', () => writeFileSync(file, lines.join('\n') + '\n'));

export const tracing = file !== undefined && file !== '';

/** Runs `f`, recording its span when tracing. */
export async function span<T>(kind: SpanKind, bytes: number, what: string, f: () => Promise<T>): Promise<T> {
  if (!tracing) return f();
  const t0 = performance.now();
  try {
    return await f();
  } finally {
    lines.push(JSON.stringify({ kind, t0: Math.round(t0 * 10) / 10, t1: Math.round(performance.now() * 10) / 10, bytes, what }));
  }
}
