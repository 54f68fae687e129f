/** Compiling and instantiating the SIMD kernels over a shared memory. */
import { KERNELS_WAT, CONST_TABLE, constTableBytes } from './kernels.wat.js';
import { E4M3_VALUES } from '../codecs/e4m3.js';

export interface WasmKernels {
  memory: WebAssembly.Memory;
  amax_bf16(src: number, n: number): number;
  lut16(src: number, n: number, lut: number, dst: number): void;
  nvfp4(src: number, nblk: number, ws2: number, six: number, codes: number, scales: number): void;
  nvfp4x4(src: number, n4: number, ws2: number, six: number, codes: number, scales: number, packed: number): void;
  int4(src: number, ngroups: number, codes: number, scales: number): void;
  pack_int4_rows(q: number, rows: number, K: number, dst: number): void;
  fp8_block(src: number, rows: number, K: number, codes: number, scales: number): void;
}

/** Bytes at the start of the memory reserved for the e4m3 decode table and the vector constants (one page). */
export const WASM_RESERVED = 4096;

let compiled: Promise<WebAssembly.Module> | undefined;

/** Compiles the kernels once per thread (wabt: ~45 ms). */
export function compileKernels(): Promise<WebAssembly.Module> {
  compiled ??= (async () => {
    const wabt = await (await import('wabt')).default();
    const mod = wabt.parseWat('kernels.wat', KERNELS_WAT, { simd: true, threads: true });
    const { buffer } = mod.toBinary({});
    mod.destroy();
    return new WebAssembly.Module(buffer as unknown as BufferSource);
  })();
  return compiled;
}

/** A shared memory of `bytes` (rounded up to 64 KiB pages) with the e4m3 table at 0 and the kernels' constants after it. */
export function createSharedMemory(bytes: number): WebAssembly.Memory {
  const pages = Math.ceil((bytes + WASM_RESERVED) / 65536);
  const memory = new WebAssembly.Memory({ initial: pages, maximum: pages, shared: true });
  new Float32Array(memory.buffer, 0, 256).set(E4M3_VALUES);
  const table = constTableBytes();
  if (CONST_TABLE + table.length > WASM_RESERVED) throw new Error('internal: kernel constants overflow the reserved page');
  new Uint8Array(memory.buffer, CONST_TABLE, table.length).set(table);
  return memory;
}

export function instantiate(module: WebAssembly.Module, memory: WebAssembly.Memory): WasmKernels {
  const inst = new WebAssembly.Instance(module, { env: { mem: memory } });
  return { memory, ...(inst.exports as unknown as Omit<WasmKernels, 'memory'>) };
}
