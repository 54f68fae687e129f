/** Piscina worker: serves kernel tasks from the pool's mailbox (mailbox.ts); inputs and outputs are views of shared memory. */
import { workerData } from 'piscina';
import { runKernel, type KernelTask } from './tasks.js';
import { instantiate, type KernelCode, type WasmKernels } from './wasm.js';
import { serve as serveMailbox, type ServeArgs } from './mailbox.js';

const data = workerData as { code?: KernelCode; memory?: WebAssembly.Memory } | undefined;
const kernels: WasmKernels | undefined = data?.code && data.memory ? instantiate(data.code, data.memory) : undefined;

/** Runs for the pool's whole life: every kernel task of this worker, until the pool closes. */
export function serve(args: ServeArgs): number {
  return serveMailbox(args, (task) => runKernel(task as KernelTask, kernels));
}
