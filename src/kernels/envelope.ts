/** Codes and scales of a kernel result in one buffer, so a worker can transfer it in one move. */
import type { KernelResult, KernelTask } from './tasks.js';

export function joinResult(r: KernelResult): Uint8Array {
  const codes = new Uint8Array(r.codes.buffer, r.codes.byteOffset, r.codes.byteLength);
  const scales = r.scales ? new Uint8Array(r.scales.buffer, r.scales.byteOffset, r.scales.byteLength) : new Uint8Array(0);
  const out = new Uint8Array(codes.length + scales.length);
  out.set(codes, 0);
  out.set(scales, codes.length);
  return out;
}

/** Splits a joined result: one code byte per weight element, then the scales of the task's kind. */
export function splitResult(task: KernelTask, buf: Uint8Array): KernelResult {
  const n = task.w.length;
  const codeBytes = buf.subarray(0, n);
  const rest = buf.slice(n); // own, aligned copy (scales are small)
  const codes = task.kind === 'int4' ? new Int8Array(codeBytes.buffer, codeBytes.byteOffset, n) : codeBytes;
  switch (task.kind) {
    case 'fp8':
      return { codes };
    case 'nvfp4':
      return { codes, scales: rest };
    case 'fp8_block':
    case 'int4':
      return { codes, scales: new Float32Array(rest.buffer, 0, rest.length / 4) };
  }
}
