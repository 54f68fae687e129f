/** Compiling and instantiating the SIMD kernels over a shared memory. */
import { KERNELS_WAT, CONST_TABLE, constTableBytes, LUT16_WAT, LUT_ADDRESS_STAND_IN, LUT16_LOOKUPS } from './kernels.wat.js';
import { E4M3_VALUES } from '../codecs/e4m3.js';

export interface WasmKernels {
  memory: WebAssembly.Memory;
  /** max of (bits & 0x7fff) over n bf16 or f16 values. */
  amax_bf16(src: number, n: number): number;
  /** dst[i] = lut[16 bits of src[i]] (bf16 or f16); the first call for a table address compiles a kernel for it (~1 ms). */
  lut16(src: number, n: number, lut: number, dst: number): void;
  /** NVFP4 by the tables of nvfp4TablesForBf16 (or ForF16) at `tables`: block scales, and the codes packed two per byte (8 bytes a block). */
  nvfp4_packed(src: number, nblk: number, tables: number, scales: number, packed: number): void;
  /** As nvfp4_packed, with one code per element (16 bytes a block). */
  nvfp4_codes(src: number, nblk: number, tables: number, scales: number, codes: number): void;
  /** AWQ edits of bf16 rows in place (K % 8 == 0): w[r, k] /= s[k]; w[r, k] *= s[r]; w[r, k] = w[r, k] * old[k] / new[k]; each rounded to bf16. */
  ops_div_col(src: number, rows: number, K: number, s: number): void;
  ops_mul_row(src: number, rows: number, K: number, s: number): void;
  ops_resmooth(src: number, rows: number, K: number, old: number, next: number): void;
  /** The same edits of f16 rows (each rounded back to f16). */
  ops_div_col_f16(src: number, rows: number, K: number, s: number): void;
  ops_mul_row_f16(src: number, rows: number, K: number, s: number): void;
  ops_resmooth_f16(src: number, rows: number, K: number, old: number, next: number): void;
  int4(src: number, ngroups: number, codes: number, scales: number): void;
  /** int4 and fp8_block over f16 weights. */
  int4_f16(src: number, ngroups: number, codes: number, scales: number): void;
  fp8_block_f16(src: number, rows: number, K: number, codes: number, scales: number): void;
  pack_int4_rows(q: number, rows: number, K: number, dst: number): void;
  fp8_block(src: number, rows: number, K: number, codes: number, scales: number): void;
  /** FP8-block codes expanded in place to bf16 (K % 128 == 0; the tile scales at `scales`, row r in tile row (phase + r) / 128). */
  fp8_block_expand(src: number, rows: number, K: number, scales: number, BK: number, phase: number): void;
  /** Per 128x128 tile of FP8-block codes, byte-wise maxima of (code & 0x7f) into a v128 each at `acc` (zeroed by the caller). */
  fp8_tile_max(src: number, rows: number, K: number, BK: number, phase: number, acc: number): void;
}

/** The compiled kernels, and the table-lookup kernel's bytes with the offsets of its table address to patch (structured-cloneable, for workers). */
export interface KernelCode {
  module: WebAssembly.Module;
  lutTemplate: Uint8Array;
  lutSites: number[];
}

/** Bytes at the start of the memory reserved for the e4m3 decode table and the vector constants (one page). */
export const WASM_RESERVED = 4096;

let compiled: Promise<KernelCode> | undefined;

/** Compiles the kernels once per thread (wabt: ~45 ms). */
export function compileKernels(): Promise<KernelCode> {
  compiled ??= (async () => {
    const wabt = await (await import('wabt')).default();
    const binary = (wat: string) => {
      const mod = wabt.parseWat('kernels.wat', wat, { simd: true, threads: true });
      const { buffer } = mod.toBinary({});
      mod.destroy();
      return buffer;
    };
    const lutTemplate = binary(LUT16_WAT);
    return { module: new WebAssembly.Module(binary(KERNELS_WAT) as unknown as BufferSource), lutTemplate, lutSites: standIns(lutTemplate) };
  })();
  return compiled;
}

/** A u32 in the 5-byte LEB128 form (padded with continuation bits), which any u32 fits. */
function leb5(x: number): number[] {
  return [0, 1, 2, 3].map((i) => ((x >>> (7 * i)) & 0x7f) | 0x80).concat((x >>> 28) & 0x0f);
}

/**
 * Offsets of the stand-in address in the table kernel's binary; exactly LUT16_LOOKUPS of them or the
 * binary is not what we wrote. The stand-in (>= 2^28) takes 5 bytes, as every patched address does,
 * so patching never moves a byte.
 */
function standIns(bin: Uint8Array): number[] {
  const pat = leb5(LUT_ADDRESS_STAND_IN);
  const at: number[] = [];
  for (let i = 0; i + 5 <= bin.length; i++) if (pat.every((b, j) => bin[i + j] === b)) at.push(i);
  if (at.length !== LUT16_LOOKUPS) throw new Error(`internal: table kernel has ${at.length} table addresses, expected ${LUT16_LOOKUPS}`);
  return at;
}

/** The table-lookup kernel with its table at `lut`. */
function lutModule(code: KernelCode, lut: number): WebAssembly.Module {
  const bin = code.lutTemplate.slice();
  const enc = leb5(lut);
  for (const i of code.lutSites) bin.set(enc, i);
  return new WebAssembly.Module(bin);
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

export function instantiate(code: KernelCode, memory: WebAssembly.Memory): WasmKernels {
  const inst = new WebAssembly.Instance(code.module, { env: { mem: memory } });
  // one lookup kernel per table address (one per slot), compiled on first use
  const lutKernels = new Map<number, (src: number, n: number, dst: number) => void>();
  const lut16 = (src: number, n: number, lut: number, dst: number) => {
    let f = lutKernels.get(lut);
    if (!f) {
      const exp = new WebAssembly.Instance(lutModule(code, lut), { env: { mem: memory } }).exports;
      f = exp.lut16 as (src: number, n: number, dst: number) => void;
      lutKernels.set(lut, f);
    }
    f(src, n, dst);
  };
  return { memory, ...(inst.exports as unknown as Omit<WasmKernels, 'memory' | 'lut16'>), lut16 };
}
