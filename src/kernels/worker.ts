/** Piscina worker: runs one kernel task; inputs and outputs are views of shared memory. */
import { workerData } from 'piscina';
import { runKernel, type KernelTask, type KernelResult } from './tasks.js';
import { instantiate, type WasmKernels } from './wasm.js';

const data = workerData as { module?: WebAssembly.Module; memory?: WebAssembly.Memory } | undefined;
const kernels: WasmKernels | undefined = data?.module && data.memory ? instantiate(data.module, data.memory) : undefined;

export default function work(task: KernelTask): KernelResult {
  return runKernel(task, kernels);
}
