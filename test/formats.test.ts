import { describe, expect, it } from 'vitest';
import { bf16ToF32, f16ToF32, f32Bits, roundBf16, f32FromBits } from '../src/codecs/float.js';
import { quantizeNvfp4, quantizeNvfp4Ref, nvfp4GlobalScale, dequantizeNvfp4, nvfp4TablesForBf16, nvfp4TablesForF16, NVFP4_SCALE_TABLE } from '../src/formats/nvfp4.js';
import { e2m1EncodeRef } from '../src/codecs/e2m1.js';
import { E4M3_VALUES } from '../src/codecs/e4m3.js';
import { quantizeFp8, quantizeFp8Ref, fp8WeightScale, fp8LutForBf16, fp8LutForF16, quantizeFp8Lut16, dequantizeFp8 } from '../src/formats/fp8.js';
import { fp8BlockScales, quantizeFp8Block, quantizeFp8BlockRef, dequantizeFp8Block } from '../src/formats/fp8-block.js';
import { int4Scales, quantizeInt4, quantizeInt4Ref, dequantizeInt4 } from '../src/formats/int4.js';
import { amaxOf } from '../src/formats/common.js';
import { hex } from './helpers.js';
import { packNibblesK } from '../src/codecs/e2m1.js';

// spec §7.1: bf16 rows as bit patterns
const R = [
  'bf80 bf6f bf5f bf4e bf3e bf2d bf1d bf0c bef8 bed7 beb6 be95 be67 be25 bdc6 bd04 3d04 3dc6 3e25 3e67 3e95 3eb6 3ed7 3ef8 3f0c 3f1d 3f2d 3f3e 3f4e 3f5f 3f6f 3f80',
  '0000 0000 0000 0000 0000 0000 0000 0000 0000 0000 0000 0000 0000 0000 0000 0000 3586 3606 3649 3686 36a8 36c9 36eb 3706 3717 3728 3739 3749 375a 376b 377c 3786',
  '3e80 3f40 3fa0 3fe0 4020 4060 40a0 40c0 be80 bf40 bfa0 bfe0 c020 c060 c0a0 bdcd 3e9a 3f33 3fa6 3fda 4026 405a 40a3 409d be9a bf33 bfa6 bfda c026 c05a c0a3 0000',
  '0000 40d8 4126 4111 4061 4128 c112 c125 c0d4 3e35 40dd 4126 4110 4056 c076 c114 c125 c0d0 3eb5 40e1 4126 410e 404c c080 c115 c124 c0cb 3f08 40e5 4127 410d 4041',
];
const goldenW = Float32Array.from(R.join(' ').split(' ').map((h) => bf16ToF32(parseInt(h, 16))));

describe('NVFP4 golden vectors (spec §7.1)', () => {
  const ws2 = nvfp4GlobalScale(amaxOf(goldenW));
  it('weight_scale_2 = 10.5 / 2688 = 2^-8', () => {
    expect(f32Bits(ws2)).toBe(0x3b800000);
  });
  for (const [label, q] of [['reference', quantizeNvfp4Ref], ['fast', quantizeNvfp4]] as const) {
    it(`${label}: block scales and packed weight are byte-exact`, () => {
      const { codes, scales } = q(goldenW, 4, 32, ws2);
      const weight = packNibblesK(codes);
      expect(hex(scales)).toBe('63 63 38 01 78 76 7e 7e');
      expect(hex(weight)).toBe(
        [
          'ff ef ee de cd bc ab 89 10 32 43 54 65 66 76 77',
          '00 00 00 00 00 00 00 00 10 11 21 22 32 33 43 44',
          '20 42 64 76 a8 ca ec 8e 21 43 65 77 a9 cb ed 0f',
          '60 77 74 ff 0e 76 47 fc ef 60 77 c4 ff 1e 76 37',
        ].join(' '),
      );
    });
  }
  it('input_scale for activation amax 20 is 0x3bf3cf3d', () => {
    expect(f32Bits(nvfp4GlobalScale(20))).toBe(0x3bf3cf3d);
  });
  it('dequantizes within one e2m1 step of each block', () => {
    const { codes, scales } = quantizeNvfp4(goldenW, 4, 32, ws2);
    const d = dequantizeNvfp4(codes, scales, 4, 32, ws2);
    // the widest e2m1 step is 4 -> 6, so the error is at most 1 x the block's scale (<= amax/6)
    for (let i = 0; i < d.length; i++) expect(Math.abs(d[i]! - goldenW[i]!)).toBeLessThanOrEqual(10.5 / 6 + 1e-6);
  });
});

describe('FP8 per-tensor golden vector (spec §7.4)', () => {
  const w = Float32Array.from([0.01, -0.5, 1.0, 3.7, -3.7, 2.2, 0.333, -0.0001].map(roundBf16));
  const scale = fp8WeightScale(amaxOf(w));
  it('weight_scale = bf16(3.7)/448 = 0x3c076db7', () => {
    expect(f32Bits(scale)).toBe(0x3c076db7);
  });
  it('reference, fast and LUT encoders give 3a e7 6f 7e fe 78 62 86', () => {
    expect(hex(quantizeFp8Ref(w, scale, 'BF16'))).toBe('3a e7 6f 7e fe 78 62 86');
    expect(hex(quantizeFp8(w, scale, 'BF16'))).toBe('3a e7 6f 7e fe 78 62 86');
    const bits = Uint16Array.from(w, (x) => f32Bits(x) >>> 16);
    expect(hex(quantizeFp8Lut16(bits, fp8LutForBf16(scale)))).toBe('3a e7 6f 7e fe 78 62 86');
  });
});

/** Deterministic pseudo-random weights with outliers, zero blocks and exact ties. */
function weights(n: number, seed: number, dtype: 'BF16' | 'F32'): Float32Array {
  let s = seed >>> 0;
  const rnd = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32);
  const w = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    let v = (rnd() - 0.5) * 0.1;
    if (rnd() < 0.001) v *= 40;
    if ((i >> 7) % 13 === 5) v = 0; // some all-zero blocks
    w[i] = dtype === 'BF16' ? roundBf16(v) : Math.fround(v);
  }
  return w;
}

describe('fast kernels equal their plain reference', () => {
  it('FP8 per-tensor table over f16 bits = the reference at every finite f16 value', () => {
    const bits = Uint16Array.from({ length: 65536 }, (_, b) => b).filter((b) => (b & 0x7c00) !== 0x7c00);
    const w = Float32Array.from(bits, f16ToF32);
    for (const s of [1 / 448, 65504 / 448, 3e-5 / 448]) expect(Buffer.compare(quantizeFp8Lut16(bits, fp8LutForF16(s)), quantizeFp8Ref(w, s, 'F16'))).toBe(0);
  });
  for (const dtype of ['BF16', 'F32'] as const) {
    it(`FP8 per-tensor (${dtype})`, () => {
      const w = weights(256 * 384, 1, dtype);
      const s = fp8WeightScale(amaxOf(w));
      const ref = quantizeFp8Ref(w, s, dtype);
      expect(Buffer.compare(quantizeFp8(w, s, dtype), ref)).toBe(0);
      if (dtype === 'BF16') {
        const bits = Uint16Array.from(w, (x) => f32Bits(x) >>> 16);
        expect(Buffer.compare(quantizeFp8Lut16(bits, fp8LutForBf16(s)), ref)).toBe(0);
      }
      const d = dequantizeFp8(ref, s);
      for (let i = 0; i < w.length; i++) expect(Math.abs(d[i]! - w[i]!)).toBeLessThanOrEqual(Math.abs(w[i]!) / 16 + s * 2 ** -9 + 1e-12);
    });
    it(`FP8 128x128 blocks (${dtype}), ragged edges`, () => {
      const N = 300, K = 200;
      const w = weights(N * K, 2, dtype);
      const sc = fp8BlockScales(w, N, K);
      expect(sc.length).toBe(3 * 2);
      const ref = quantizeFp8BlockRef(w, N, K, sc);
      expect(Buffer.compare(quantizeFp8Block(w, N, K, sc), ref)).toBe(0);
      const d = dequantizeFp8Block(ref, N, K, sc);
      for (let i = 0; i < w.length; i += 7) {
        const s = sc[Math.floor(Math.floor(i / K) / 128) * 2 + Math.floor((i % K) / 128)]!;
        expect(Math.abs(d[i]! - w[i]!)).toBeLessThanOrEqual(Math.abs(w[i]!) / 16 + s * 2 ** -10 + 1e-12);
      }
    });
    it(`NVFP4 (${dtype})`, () => {
      const N = 64, K = 256;
      const w = weights(N * K, 3, dtype);
      const ws2 = nvfp4GlobalScale(amaxOf(w));
      const a = quantizeNvfp4Ref(w, N, K, ws2);
      const b = quantizeNvfp4(w, N, K, ws2);
      expect(Buffer.compare(a.codes, b.codes)).toBe(0);
      expect(Buffer.compare(a.scales, b.scales)).toBe(0);
    });
    it(`INT4 (${dtype}) incl. exact .5 ties`, () => {
      const N = 32, K = 256;
      const w = weights(N * K, 4, dtype);
      const sc = int4Scales(w, N, K);
      // plant exact ties q = +-0.5, +-1.5, +-2.5 relative to the first group's scale of row 0
      for (let j = 0; j < 6; j++) w[1 + j] = Math.fround(sc[0]! * [0.5, -0.5, 1.5, -1.5, 2.5, -2.5][j]!);
      const ref = quantizeInt4Ref(w, N, K, sc);
      expect(Buffer.compare(Buffer.from(quantizeInt4(w, N, K, sc).buffer), Buffer.from(ref.buffer))).toBe(0);
      const d = dequantizeInt4(ref, N, K, sc);
      for (let i = 0; i < w.length; i++) expect(Math.abs(d[i]! - w[i]!)).toBeLessThanOrEqual(sc[Math.floor(i / 128)]! * 0.5 + 1e-9);
      expect(f32FromBits(f32Bits(d[1]!))).toBe(0); // 0.5 -> 0 (half to even)
      expect(d[5]).toBeCloseTo(sc[0]! * 2, 9); // 2.5 -> 2
    });
  }
});

describe("NVFP4 tables (the SIMD kernel's) against the plain reference", () => {
  // bf16: ordinary, power of two (exact e2m1 ties), huge (quotients underflow to -0: the sign
  // threshold), tiny (subnormal divisors); f16: its own range (max 65504) and subnormals
  const cases = [
    ...[3.1 / 2688, 2 ** -9, 1e30, 1e-38].map((ws2) => ({ dtype: 'bf16', ws2, tables: nvfp4TablesForBf16, value: bf16ToF32, inf: 0x7f80 })),
    ...[3.1 / 2688, 2 ** -9, 40 / 2688, 1e-7].map((ws2) => ({ dtype: 'f16', ws2, tables: nvfp4TablesForF16, value: f16ToF32, inf: 0x7c00 })),
  ];
  for (const { dtype, ws2, tables, value, inf } of cases) {
    it(`${dtype}, ws2 = ${ws2}: the scale of a block of every finite max, and every (scale, value) code`, () => {
      const t = tables(ws2);
      // blocks [m, 0, ..., 0] for every finite magnitude m: the reference's block scale = table[m]
      const w = new Float32Array(inf * 16);
      for (let m = 0; m < inf; m++) w[m * 16] = value(m);
      expect(Buffer.compare(quantizeNvfp4Ref(w, inf, 16, ws2).scales, t.subarray(0, inf))).toBe(0);
      const thr = new Int16Array(t.buffer, t.byteOffset + NVFP4_SCALE_TABLE, 128 * 8);
      let bad = 0;
      for (let c = 1; c <= 0x7e; c++) {
        const div = Math.fround(E4M3_VALUES[c]! * ws2);
        for (let bits = 0; bits < inf; bits++) {
          let mag = 0;
          for (let k = 0; k < 7; k++) mag += +(bits > thr[c * 8 + k]!);
          const x = value(bits);
          if (mag !== e2m1EncodeRef(Math.fround(x / div))) bad++;
          if ((mag | (bits > thr[c * 8 + 7]! ? 8 : 0)) !== e2m1EncodeRef(Math.fround(-x / div))) bad++;
        }
      }
      expect(bad).toBe(0);
    });
  }
});
