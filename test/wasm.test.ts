/** The WebAssembly SIMD kernels give exactly the bytes of the plain JavaScript kernels. */
import { beforeAll, describe, expect, it } from 'vitest';
import { assembleKernels, compileKernels, createSharedMemory, instantiate, watDigest, WASM_RESERVED, type WasmKernels } from '../src/kernels/wasm.js';
import { PREBUILT_KERNELS, PREBUILT_LUT16, PREBUILT_WAT_SHA256 } from '../src/kernels/kernels.wasm.js';
import { runKernel, type KernelTask } from '../src/kernels/tasks.js';
import type { WeightOp } from '../src/kernels/weight-ops.js';
import { f32ToBf16, bf16ToF32 } from '../src/codecs/float.js';
import fc from 'fast-check';

let k: WasmKernels;
let mem: WebAssembly.Memory;
beforeAll(async () => {
  mem = createSharedMemory(64 * 2 ** 20);
  k = instantiate(await compileKernels(), mem);
});

describe('prebuilt binaries', () => {
  it('are what wabt assembles from the WAT text, which they were made from (else: npm run gen:wasm)', async () => {
    const fresh = await assembleKernels();
    expect(PREBUILT_WAT_SHA256, 'kernels.wasm.ts is stale: run npm run gen:wasm').toBe(watDigest());
    expect(Buffer.from(PREBUILT_KERNELS, 'base64').equals(Buffer.from(fresh.kernels))).toBe(true);
    expect(Buffer.from(PREBUILT_LUT16, 'base64').equals(Buffer.from(fresh.lut16))).toBe(true);
    // and the binary compileKernels hands out is the prebuilt one (its exports are the kernels')
    const code = await compileKernels();
    expect(WebAssembly.Module.exports(code.module).map((e) => e.name)).toEqual(WebAssembly.Module.exports(new WebAssembly.Module(fresh.kernels as unknown as BufferSource)).map((e) => e.name));
    expect(Buffer.from(code.lutTemplate).equals(Buffer.from(fresh.lut16))).toBe(true);
  });
});

const N = 256, K = 384; // 3 tiles of 128 along K, 2 bands of 128 rows
/** bf16 weights with zero blocks, outliers, exact e2m1/int4 ties at power-of-two scales, -0 and tiny values. */
function fill(u16: Uint16Array, seed: number) {
  let s = seed;
  for (let i = 0; i < u16.length; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    let v = ((s / 2 ** 32) - 0.5) * 0.1;
    if ((s & 0xfff) === 3) v *= 60;
    if ((s & 0xff) === 5) v = 1e-30;
    if ((s & 0xff) === 6) v = -0;
    u16[i] = f32ToBf16(v);
  }
  u16.fill(0, 16 * 7, 16 * 8); // an all-zero NVFP4 block
  u16.fill(0, K * 3, K * 3 + 128); // an all-zero int4 group
}

function views(base: number) {
  const buf = mem.buffer;
  const src = new Uint8Array(buf, base, N * K * 2);
  return {
    src,
    codes: new Uint8Array(buf, base + N * K * 2, N * K),
    scales: new Uint8Array(buf, base + N * K * 3, N * K),
    lut: new Uint8Array(buf, base + N * K * 4, 65536),
    packed: new Uint8Array(buf, base + N * K * 4 + 65536, (N * K) / 2),
  };
}

/** Every finite bf16 bit pattern once (NaN/Inf patterns replaced by zeros), in pattern order. */
function everyBf16(u16: Uint16Array) {
  for (let i = 0; i < u16.length; i++) {
    const b = i & 0xffff;
    u16[i] = (b & 0x7f80) === 0x7f80 ? 0 : b;
  }
}

/** Every finite f16 bit pattern once (Inf/NaN patterns replaced by zeros), in pattern order. */
function everyF16(u16: Uint16Array) {
  for (let i = 0; i < u16.length; i++) {
    const b = i & 0xffff;
    u16[i] = (b & 0x7c00) === 0x7c00 ? 0 : b;
  }
}

function compare(kind: KernelTask['kind'], extra: (v: ReturnType<typeof views>) => Partial<KernelTask>, fillWith: (u16: Uint16Array) => void = (u) => fill(u, 42)) {
  const a = views(WASM_RESERVED), b = views(WASM_RESERVED + 16 * 2 ** 20);
  fillWith(new Uint16Array(a.src.buffer, a.src.byteOffset, N * K));
  b.src.set(a.src);
  const mk = (v: ReturnType<typeof views>, wasm: boolean) =>
    ({ src: v.src, dtype: 'BF16', row0: 0, rows: N, K, ops: [], wasm, lut: v.lut, kind, ...extra(v) }) as KernelTask;
  const ra = runKernel(mk(a, true), k);
  const rb = runKernel(mk(b, false));
  expect(ra).toEqual(rb);
  if (ra.nonFinite) return; // a failed task's outputs are never used (the export stops with an error)
  expect(Buffer.compare(a.codes, b.codes)).toBe(0);
  expect(Buffer.compare(a.scales, b.scales)).toBe(0);
  expect(Buffer.compare(a.packed, b.packed)).toBe(0);
}

describe('SIMD kernels = JavaScript kernels, byte for byte', () => {
  it('amax (scan)', () => compare('scan', () => ({})));
  it('FP8 per-tensor (64K table)', () => compare('fp8', (v) => ({ scale: 3.1 / 448, codes: v.codes })));
  it('FP8 128x128 blocks', () => compare('fp8_block', (v) => ({ codes: v.codes, scales: new Float32Array(v.scales.buffer, v.scales.byteOffset, 2 * 3) })));
  it('NVFP4 (also with a power-of-two global scale, where e2m1 ties are exact)', () => {
    compare('nvfp4', (v) => ({ ws2: 3.1 / 2688, codes: v.codes, scales: v.scales.subarray(0, (N * K) / 16), packed: v.packed }));
    compare('nvfp4', (v) => ({ ws2: 2 ** -9, codes: v.codes, scales: v.scales.subarray(0, (N * K) / 16) }));
  });
  it('NVFP4 as the export asks for it (packed codes only, no one-per-element codes), at every finite bf16 value', () => {
    for (const ws2 of [3.1 / 2688, 2 ** -9, 1e30]) {
      const a = views(WASM_RESERVED), b = views(WASM_RESERVED + 16 * 2 ** 20);
      everyBf16(new Uint16Array(a.src.buffer, a.src.byteOffset, N * K));
      b.src.set(a.src);
      a.codes.fill(0xab);
      const base = { src: a.src, dtype: 'BF16', row0: 0, rows: N, K, ops: [], kind: 'nvfp4', ws2 } as const;
      runKernel({ ...base, wasm: true, lut: a.lut, scales: a.scales.subarray(0, (N * K) / 16), packed: a.packed }, k);
      runKernel({ ...base, src: b.src, wasm: false, codes: b.codes, scales: b.scales.subarray(0, (N * K) / 16), packed: b.packed });
      expect(Buffer.compare(a.packed, b.packed)).toBe(0);
      expect(Buffer.compare(a.scales.subarray(0, (N * K) / 16), b.scales.subarray(0, (N * K) / 16))).toBe(0);
      expect(a.codes.every((x) => x === 0xab)).toBe(true); // not asked for, not written
    }
  });
  it('FP8 table kernel: an element count that is not a multiple of its 64 per iteration, two table addresses', () => {
    const a = views(WASM_RESERVED), b = views(WASM_RESERVED + 16 * 2 ** 20);
    fill(new Uint16Array(a.src.buffer, a.src.byteOffset, N * K), 11);
    b.src.set(a.src);
    const rows = 3, K2 = 47; // 141 elements: 2 iterations of 64 and a 13-element tail
    for (const [scale, lut] of [[0.9 / 448, a.lut], [4.2 / 448, new Uint8Array(mem.buffer, WASM_RESERVED + 40 * 2 ** 20, 65536)]] as const) {
      const mk = (v: ReturnType<typeof views>, wasm: boolean, table: Uint8Array) =>
        ({ src: v.src.subarray(0, rows * K2 * 2), dtype: 'BF16', row0: 0, rows, K: K2, ops: [], wasm, lut: table, kind: 'fp8', scale, codes: v.codes.subarray(0, rows * K2 + 1) }) as KernelTask;
      a.codes[rows * K2] = 0xab; // the byte after the last code stays untouched
      runKernel(mk(a, true, lut), k);
      runKernel(mk(b, false, b.lut));
      expect(Buffer.compare(a.codes.subarray(0, rows * K2), b.codes.subarray(0, rows * K2))).toBe(0);
      expect(a.codes[rows * K2]).toBe(0xab);
    }
  });
  it('NVFP4 when the block count is not a multiple of 4 (the one-block tail)', () => {
    const a = views(WASM_RESERVED), b = views(WASM_RESERVED + 16 * 2 ** 20);
    fill(new Uint16Array(a.src.buffer, a.src.byteOffset, N * K), 9);
    b.src.set(a.src);
    const K2 = 16 * 7, rows = 5; // 35 blocks
    const mk = (v: ReturnType<typeof views>, wasm: boolean) =>
      ({ src: v.src.subarray(0, rows * K2 * 2), dtype: 'BF16', row0: 0, rows, K: K2, ops: [], wasm, lut: v.lut, kind: 'nvfp4', ws2: 2.2 / 2688, codes: v.codes.subarray(0, rows * K2), scales: v.scales.subarray(0, (rows * K2) / 16), packed: v.packed.subarray(0, (rows * K2) / 2) }) as KernelTask;
    runKernel(mk(a, true), k);
    runKernel(mk(b, false));
    expect(Buffer.compare(a.codes.subarray(0, rows * K2), b.codes.subarray(0, rows * K2))).toBe(0);
    expect(Buffer.compare(a.scales.subarray(0, 35), b.scales.subarray(0, 35))).toBe(0);
    expect(Buffer.compare(a.packed.subarray(0, (rows * K2) / 2), b.packed.subarray(0, (rows * K2) / 2))).toBe(0);
  });
  it('every finite bf16 value, through each format (the rounding bit tricks, at every exponent)', () => {
    // N * K = 98,304 elements: all 65,536 patterns, then the first 32,768 again
    const nv = (ws2: number) => (v: ReturnType<typeof views>) => ({ ws2, codes: v.codes, scales: v.scales.subarray(0, (N * K) / 16), packed: v.packed });
    compare('nvfp4', nv(2 ** -9), everyBf16);
    compare('nvfp4', nv(3.1 / 2688), everyBf16);
    compare('nvfp4', nv(1e30), everyBf16); // scales clamp at 2^-9: large quotients saturate
    compare('fp8_block', (v) => ({ codes: v.codes, scales: new Float32Array(v.scales.buffer, v.scales.byteOffset, 2 * 3) }), everyBf16);
    compare('fp8', (v) => ({ scale: 3.1 / 448, codes: v.codes }), everyBf16);
    compare('int4', (v) => ({ codes: new Int8Array(v.codes.buffer, v.codes.byteOffset, N * K), scales: new Float32Array(v.scales.buffer, v.scales.byteOffset, (N * K) / 128), packed: v.packed }), everyBf16);
  });
  it('AWQ edits (divide columns, scale rows, re-smooth) before each format, every finite bf16 and f16 value', () => {
    // pre_quant_scale-like bf16 vectors in [lo, hi); each edit shrinks weights here, so none of
    // these bf16 values overflows (an overflow is the error case, tested at the end)
    const vec = (n: number, seed: number, lo: number, hi: number) => Float32Array.from({ length: n }, (_, k) => bf16ToF32(f32ToBf16(lo + (((k * 2654435761 + seed) >>> 0) % 1000) * ((hi - lo) / 1000))));
    const col = (seed: number) => vec(K, seed, 1, 6);
    const row = vec(N + 8, 9, 0.2, 1);
    const old = vec(K, 3, 0.3, 1);
    const opSets: WeightOp[][] = [
      [{ kind: 'divCol', s: col(1) }],
      [{ kind: 'mulRow', s: row }],
      [{ kind: 'divCol', s: col(2) }, { kind: 'resmooth', old, new: col(4) }],
      [{ kind: 'divCol', s: col(5) }, { kind: 'mulRow', s: row }],
    ];
    const nv = (v: ReturnType<typeof views>) => ({ ws2: 3.1 / 2688, codes: v.codes, scales: v.scales.subarray(0, (N * K) / 16), packed: v.packed });
    for (const [dtype, every] of [['BF16', everyBf16], ['F16', everyF16]] as const) {
      for (const ops of opSets) {
        compare('scan', () => ({ dtype, ops }), every);
        compare('fp8', (v) => ({ dtype, ops, scale: 2.9 / 448, codes: v.codes }), every);
        compare('nvfp4', (v) => ({ dtype, ops, ...nv(v) }), every);
        compare('int4', (v) => ({ dtype, ops, codes: new Int8Array(v.codes.buffer, v.codes.byteOffset, N * K), scales: new Float32Array(v.scales.buffer, v.scales.byteOffset, (N * K) / 128), packed: v.packed }), every);
        compare('fp8_block', (v) => ({ dtype, ops, codes: v.codes, scales: new Float32Array(v.scales.buffer, v.scales.byteOffset, 2 * 3) }), dtype === 'BF16' ? (u) => fill(u, 5) : every);
      }
    }
    // f16 edits that overflow (x2 past 32768) give the same infinities, found at the same place
    compare('scan', () => ({ dtype: 'F16', ops: [{ kind: 'mulRow', s: new Float32Array(N).fill(2) }] }), everyF16);
    // the edited source is what the JavaScript path edits: a NaN/Inf made by an edit (a zero scale)
    // is found at the same element, with the same value, by the JavaScript path that locates it
    const zero = col(6);
    zero[17] = 0;
    compare('scan', () => ({ ops: [{ kind: 'divCol', s: zero }] }), (u) => fill(u, 6));
  });
  it('f16 weights: every kernel at every finite f16 value (tables over f16 bits; f16 widened to f32 for FP8 128x128 and INT4)', () => {
    const f16 = { dtype: 'F16' } as const;
    compare('scan', () => f16, everyF16);
    for (const scale of [3.1 / 448, 65504 / 448, 1e-3 / 448]) compare('fp8', (v) => ({ ...f16, scale, codes: v.codes }), everyF16);
    for (const ws2 of [3.1 / 2688, 2 ** -9, 65504 / 2688]) compare('nvfp4', (v) => ({ ...f16, ws2, codes: v.codes, scales: v.scales.subarray(0, (N * K) / 16), packed: v.packed }), everyF16);
    compare('fp8_block', (v) => ({ ...f16, codes: v.codes, scales: new Float32Array(v.scales.buffer, v.scales.byteOffset, 2 * 3) }), everyF16);
    compare('int4', (v) => ({ ...f16, codes: new Int8Array(v.codes.buffer, v.codes.byteOffset, N * K), scales: new Float32Array(v.scales.buffer, v.scales.byteOffset, (N * K) / 128), packed: v.packed }), everyF16);
    // an f16 infinity is found (and located by the JavaScript path)
    compare('scan', () => f16, (u) => { everyF16(u); u[1234] = 0xfc00; });
  });
  it('INT4', () => compare('int4', (v) => ({ codes: new Int8Array(v.codes.buffer, v.codes.byteOffset, N * K), scales: new Float32Array(v.scales.buffer, v.scales.byteOffset, (N * K) / 128), packed: v.packed })));
  it('a NaN is located by the JavaScript path', () => {
    const v = views(WASM_RESERVED);
    const u16 = new Uint16Array(v.src.buffer, v.src.byteOffset, N * K);
    fill(u16, 1);
    u16[K + 5] = 0x7fc0;
    const r = runKernel({ src: v.src, dtype: 'BF16', row0: 0, rows: N, K, ops: [], wasm: true, kind: 'scan' }, k);
    expect(r.nonFinite?.index).toBe(K + 5);
    expect(bf16ToF32(0x7fc0)).toBeNaN();
  });
});

describe('FP8 per-tensor by arithmetic (fp8_scaled), the alternative to the table chosen per CPU', () => {
  it('equals the plain JavaScript formula at every finite bf16 value, at chosen and random scales', () => {
    const a = views(WASM_RESERVED), b = views(WASM_RESERVED + 16 * 2 ** 20);
    everyBf16(new Uint16Array(a.src.buffer, a.src.byteOffset, N * K));
    b.src.set(a.src);
    const check = (scale: number) => {
      a.codes.fill(0xab);
      k.fp8_scaled(a.src.byteOffset, N * K, scale, a.codes.byteOffset);
      runKernel({ src: b.src, dtype: 'BF16', row0: 0, rows: N, K, ops: [], wasm: false, kind: 'fp8', scale, codes: b.codes });
      expect(Buffer.compare(a.codes, b.codes), `scale ${scale}`).toBe(0);
    };
    for (const s of [3.1 / 448, 1, 2 ** -9, 1e-30, 1e30, 448, 1 / 448]) check(Math.fround(s));
    fc.assert(fc.property(fc.float({ min: Math.fround(1e-30), max: Math.fround(1e30), noNaN: true, noDefaultInfinity: true }), (s) => check(s)), { numRuns: 25 });
  });
  it('runKernel gives the same codes with the table, the arithmetic and the choice it times itself', () => {
    const ref = views(WASM_RESERVED + 32 * 2 ** 20);
    fill(new Uint16Array(ref.src.buffer, ref.src.byteOffset, N * K), 5);
    const scale = Math.fround(0.07 / 448);
    runKernel({ src: ref.src, dtype: 'BF16', row0: 0, rows: N, K, ops: [], wasm: false, kind: 'fp8', scale, codes: ref.codes });
    const before = process.env.RXQUANT_FP8_KERNEL;
    try {
      for (const mode of ['table', 'arith', undefined, undefined, undefined, undefined, undefined, undefined, undefined]) {
        if (mode) process.env.RXQUANT_FP8_KERNEL = mode;
        else delete process.env.RXQUANT_FP8_KERNEL;
        const a = views(WASM_RESERVED);
        a.src.set(ref.src);
        a.codes.fill(0xab);
        runKernel({ src: a.src, dtype: 'BF16', row0: 0, rows: N, K, ops: [], wasm: true, lut: a.lut, kind: 'fp8', scale, codes: a.codes }, k);
        expect(Buffer.compare(a.codes, ref.codes), String(mode)).toBe(0);
      }
    } finally {
      if (before === undefined) delete process.env.RXQUANT_FP8_KERNEL;
      else process.env.RXQUANT_FP8_KERNEL = before;
    }
  });
});

describe('FP8-block source expansion (fp8_block_expand) against expandFp8Block', () => {
  it('gives the same bf16 bits for every code, across tile rows and columns, with normal, tiny, huge, zero, negative and NaN scales, any row phase', async () => {
    const { expandFp8Block } = await import('../src/kernels/tasks.js');
    const Kx = 384, BK = 3;
    const scaleSet = [1, 0.0123, 3.5e-3, 1e-38, 7e-45, 3e37, 0, -0.25, NaN, Infinity, 448 / 3, 2 ** -20];
    for (const [phase, rows] of [[0, 256], [5, 300], [127, 2], [64, 129]] as const) {
      const tileRows = Math.floor((phase + rows - 1) / 128) + 1;
      const scales = Float32Array.from({ length: tileRows * BK }, (_, i) => scaleSet[(i * 5 + phase) % scaleSet.length]!);
      const codes = Uint8Array.from({ length: rows * Kx }, (_, i) => (i * 37 + (i >> 8)) & 0xff); // every code in every tile
      const a = new Uint8Array(mem.buffer, WASM_RESERVED, rows * Kx * 2);
      a.set(codes);
      const lut = new Uint8Array(mem.buffer, WASM_RESERVED + 16 * 2 ** 20, 65536);
      new Float32Array(lut.buffer, lut.byteOffset, scales.length).set(scales);
      k.fp8_block_expand(a.byteOffset, rows, Kx, lut.byteOffset, BK, phase);
      const ref = new Uint8Array(rows * Kx * 2);
      ref.set(codes);
      expandFp8Block({ src: ref, dtype: 'BF16', row0: 128 * 7 + phase, rows, K: Kx, ops: [], fp8Source: { scales, BK } });
      const got = new Uint16Array(a.buffer, a.byteOffset, rows * Kx), want = new Uint16Array(ref.buffer, 0, rows * Kx);
      const bad = want.findIndex((w, i) => w !== got[i]);
      expect(bad, `phase ${phase}: element ${bad}: code ${codes[bad]}, want ${want[bad]?.toString(16)} got ${got[bad]?.toString(16)}`).toBe(-1);
    }
  });

  it('runKernel takes the SIMD path for a chunk in the shared memory and gives the JavaScript path\'s codes', () => {
    const rows = 256, Kx = 384;
    const scales = Float32Array.from({ length: 2 * 3 }, (_, i) => 0.001 * (i + 1));
    const mk = (base: number) => {
      const src = new Uint8Array(mem.buffer, base, rows * Kx * 2);
      for (let i = 0; i < rows * Kx; i++) src[i] = (i * 101) & 0x7e; // no NaN codes
      return src;
    };
    const a = mk(WASM_RESERVED), b = mk(WASM_RESERVED + 16 * 2 ** 20);
    const lutA = new Uint8Array(mem.buffer, WASM_RESERVED + 8 * 2 ** 20, 65536), lutB = new Uint8Array(mem.buffer, WASM_RESERVED + 24 * 2 ** 20, 65536);
    // the FP8 128x128 quantization of the expanded chunk: its codes and scales by both paths
    const out = (base: number) => ({ codes: new Uint8Array(mem.buffer, base, rows * Kx), scales: new Float32Array(mem.buffer, base + rows * Kx, 2 * 3) });
    const oa = out(WASM_RESERVED + 12 * 2 ** 20), ob = out(WASM_RESERVED + 28 * 2 ** 20);
    const ra = runKernel({ kind: 'fp8_block', src: a, dtype: 'BF16', row0: 0, rows, K: Kx, ops: [], wasm: true, lut: lutA, fp8Source: { scales, BK: 3 }, ...oa } as KernelTask, k);
    const rb = runKernel({ kind: 'fp8_block', src: b, dtype: 'BF16', row0: 0, rows, K: Kx, ops: [], wasm: false, lut: lutB, fp8Source: { scales, BK: 3 }, ...ob } as KernelTask);
    expect(ra).toEqual(rb);
    expect(Buffer.compare(a, b)).toBe(0); // the expanded bf16
    expect(Buffer.compare(oa.codes, ob.codes)).toBe(0);
    expect(Array.from(oa.scales)).toEqual(Array.from(ob.scales));
  });
});

describe('FP8-block scan from the codes (fp8_tile_max)', () => {
  it("gives the amax the scan of the expanded bf16 gives, for every phase and scale kind; a NaN code or a non-finite tile goes the exact way", () => {
    const Kx = 384, BK = 3;
    const scaleSet = [1, 0.0123, 3.5e-3, 1e-38, 7e-45, 0, -0.25, 448 / 3, 2 ** -20, 1e30];
    for (const [phase, rows, nan, inf, negMax] of [[0, 256, false, false, false], [5, 300, false, false, false], [127, 2, false, false, false], [64, 129, true, false, false], [3, 200, false, true, false], [9, 140, false, false, true]] as const) {
      const tileRows = Math.floor((phase + rows - 1) / 128) + 1;
      // negMax: the largest magnitude comes from a tile with a negative scale
      const scales = Float32Array.from({ length: tileRows * BK }, (_, i) => (inf && i === 1 ? Infinity : negMax ? (i === 2 ? -3 : 0.01) : scaleSet[(i * 3 + phase) % scaleSet.length]!));
      const mk = (base: number) => {
        const src = new Uint8Array(mem.buffer, base, rows * Kx * 2);
        for (let i = 0; i < rows * Kx; i++) src[i] = ((i * 29 + (i >> 9)) & 0xff) % (nan ? 256 : 0x7f) | (i & 0x80); // every magnitude, both signs
        if (!nan) for (let i = 0; i < rows * Kx; i++) if ((src[i]! & 0x7f) === 0x7f) src[i] = 0x7e;
        return src;
      };
      const a = mk(WASM_RESERVED), b = mk(WASM_RESERVED + 16 * 2 ** 20);
      const lutA = new Uint8Array(mem.buffer, WASM_RESERVED + 8 * 2 ** 20, 65536), lutB = new Uint8Array(mem.buffer, WASM_RESERVED + 24 * 2 ** 20, 65536);
      const task = (src: Uint8Array, lut: Uint8Array, wasm: boolean) => ({ kind: 'scan', src, dtype: 'BF16', row0: 128 * 3 + phase, rows, K: Kx, ops: [], wasm, lut, fp8Source: { scales, BK } }) as KernelTask;
      const fast = runKernel(task(a, lutA, true), k);
      const exact = runKernel(task(b, lutB, false));
      expect(fast, `phase ${phase}`).toEqual(exact);
      if (nan || inf) expect(exact.nonFinite).toBeDefined();
      else expect(exact.amax).toBeGreaterThan(0);
    }
  });
});
