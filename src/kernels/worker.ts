/**
 * Piscina worker: serves kernel tasks from the pool's mailbox (mailbox.ts); inputs and outputs are
 * views of shared memory. The compiled kernels and their memory come with each serve call (not as
 * Piscina's workerData, whose import would load all of Piscina in every worker at start-up).
 */
import { runKernel, type KernelTask } from './tasks.js';
import { instantiate, type KernelCode, type WasmKernels } from './wasm.js';
import { serve as serveMailbox, type ServeArgs } from './mailbox.js';

export interface WorkerServeArgs extends ServeArgs {
  /** The SIMD kernels and the shared memory the slots live in; absent: JavaScript kernels. */
  code?: KernelCode;
  memory?: WebAssembly.Memory;
}

let kernels: WasmKernels | undefined;
let instantiated = false;

/** Runs for the pool's whole life: every kernel task of this worker, until the pool closes. */
export function serve(args: WorkerServeArgs): number {
  if (!instantiated) {
    kernels = args.code && args.memory ? instantiate(args.code, args.memory) : undefined;
    instantiated = true;
  }
  return serveMailbox(args, (task) => runKernel(task as KernelTask, kernels));
}
