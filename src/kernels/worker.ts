/** Piscina worker: runs one kernel task; inputs and outputs are views of shared memory. */
import { runKernel, type KernelTask, type KernelResult } from './tasks.js';

export default function work(task: KernelTask): KernelResult {
  return runKernel(task);
}
