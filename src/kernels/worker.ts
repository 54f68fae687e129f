/** Piscina worker: runs one kernel task and moves (not copies) the result back in a single buffer. */
import { move } from 'piscina';
import { runKernel, type KernelTask } from './tasks.js';
import { joinResult } from './envelope.js';

export default function work(task: KernelTask): Uint8Array {
  // Piscina transfers only a top-level moved value, so codes and scales travel as one buffer
  return move(joinResult(runKernel(task))) as Uint8Array;
}
