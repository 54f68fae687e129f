/** Piscina worker: runs one kernel task; inputs and outputs are views of shared memory. */
import { workerData } from 'piscina';
import { runKernel, type KernelTask, type KernelResult } from './tasks.js';
import { instantiate, type KernelCode, type WasmKernels } from './wasm.js';

const data = workerData as { code?: KernelCode; memory?: WebAssembly.Memory } | undefined;
const kernels: WasmKernels | undefined = data?.code && data.memory ? instantiate(data.code, data.memory) : undefined;

export default function work(task: KernelTask): KernelResult {
  return runKernel(task, kernels);
}
