/**
 * WebAssembly SIMD kernels over bf16 and f16 weights, hand-written (node-performance §2: 4-20x plain JS).
 * Every function reads and writes a shared memory at byte addresses the caller gives; bytes 0..1023
 * hold the e4m3 decode table (256 f32). Each kernel is tested byte-for-byte against the plain
 * JavaScript reference of its format (test/wasm.test.ts).
 *
 * Helpers are written as WAT text macros and inlined by hand, since Node 20 does not inline
 * wasm-to-wasm calls.
 */
import { NVFP4_SCALE_TABLE } from '../formats/nvfp4.js';

/**
 * Vector constants are loaded from a table in memory (CONST_TABLE, written by createSharedMemory)
 * into locals once per call. V8 rematerializes every `v128.const` at each use (a 64-bit immediate
 * move, a vmovq and a vpunpcklqdq), even when it is set once into a local, since TurboFan sees
 * through the local; a loaded value is opaque and stays in a register (or one stack load away). A
 * kernel declares the constants its macros use with CONSTS(...).
 */
const CONST_VALUES: Record<string, string> = {
  $kAbs: 'i32x4 0x7fffffff 0x7fffffff 0x7fffffff 0x7fffffff',
  $k80: 'i32x4 0x80 0x80 0x80 0x80',
  $k448: 'f32x4 448 448 448 448',
  $kMin8: 'f32x4 0.015625 0.015625 0.015625 0.015625',
  $kM8: 'f32x4 16384 16384 16384 16384',
  $kB8: 'i32x4 0xc407ffff 0xc407ffff 0xc407ffff 0xc407ffff',
  $kOne: 'i32x4 1 1 1 1',
  $kRnd: 'f32x4 12582912 12582912 12582912 12582912',
  $kRndb: 'i32x4 0x4b400000 0x4b400000 0x4b400000 0x4b400000',
  $kLo4: 'i32x4 -8 -8 -8 -8',
  $kHi4: 'i32x4 7 7 7 7',
  $k7fff: 'i32x4 0x7fff7fff 0x7fff7fff 0x7fff7fff 0x7fff7fff',
  $kFF: 'i32x4 0x00ff00ff 0x00ff00ff 0x00ff00ff 0x00ff00ff',
  $k8000: 'i32x4 0x80008000 0x80008000 0x80008000 0x80008000',
  $k8h: 'i32x4 0x00080008 0x00080008 0x00080008 0x00080008',
  $k7fff32: 'i32x4 0x7fff 0x7fff 0x7fff 0x7fff',
  $kF16Scale: 'f32x4 5.192296858534828e33 5.192296858534828e33 5.192296858534828e33 5.192296858534828e33',
  $kSign: 'i32x4 0x80000000 0x80000000 0x80000000 0x80000000',
  $kB16: 'i32x4 0xc8000fff 0xc8000fff 0xc8000fff 0xc8000fff',
  $kMinF16: 'f32x4 0.00006103515625 0.00006103515625 0.00006103515625 0.00006103515625',
  $kHalf: 'f32x4 0.5 0.5 0.5 0.5',
  $k7c00: 'i32x4 0x7c00 0x7c00 0x7c00 0x7c00',
  $k8000lo: 'i32x4 0x8000 0x8000 0x8000 0x8000',
  $k7F: 'i32x4 0x7f 0x7f 0x7f 0x7f',
  $kE120: 'i32x4 0x3c000000 0x3c000000 0x3c000000 0x3c000000',
  $k7i: 'i32x4 7 7 7 7',
  $k8i: 'i32x4 8 8 8 8',
  $k2m9: 'f32x4 0.001953125 0.001953125 0.001953125 0.001953125',
  $k7fc0: 'i32x4 0x7fc0 0x7fc0 0x7fc0 0x7fc0',
  $k7Fb: 'i32x4 0x7f7f7f7f 0x7f7f7f7f 0x7f7f7f7f 0x7f7f7f7f',
  $kHi16: 'i32x4 0xffff0000 0xffff0000 0xffff0000 0xffff0000',
};
const CONST_NAMES = Object.keys(CONST_VALUES);
/** Byte address of the constant table: after the 256-entry e4m3 decode table. */
export const CONST_TABLE = 1024;
/** The table's bytes, in CONST_NAMES order (16 bytes each). */
export function constTableBytes(): Uint8Array {
  const out = new Uint8Array(16 * CONST_NAMES.length);
  const dv = new DataView(out.buffer);
  CONST_NAMES.forEach((n, i) => {
    const [kind, ...lanes] = CONST_VALUES[n]!.split(' ');
    lanes.forEach((x, j) => {
      if (kind === 'f32x4') dv.setFloat32(16 * i + 4 * j, Number(x), true);
      else dv.setUint32(16 * i + 4 * j, Number(x) >>> 0, true);
    });
  });
  return out;
}
const CONSTS = (...names: string[]) => ({
  locals: names.map((n) => `(local ${n} v128)`).join(' '),
  init: names.map((n) => `(local.set ${n} (v128.load offset=${CONST_TABLE + 16 * CONST_NAMES.indexOf(n)} (i32.const 0)))`).join('\n    '),
});
type Dtype16 = 'BF16' | 'F16';
/**
 * 16-bit lanes (low or high 4 of a v128) -> f32x4. bf16: the bits shifted up. f16: |bits| << 13 is
 * the f32 of the value times 2^-112 (its 5-bit exponent lands in the low bits of f32's 8), so a
 * multiply by 2^112 gives the value, subnormals included; then the sign bit. Finite values only
 * (an f16 Inf/NaN becomes a large finite f32 here; the kernels' callers check scales for that).
 */
const WIDEN = (half: 'low' | 'high'): Record<Dtype16, (v: string) => string> => ({
  BF16: (v) => `(i32x4.shl (i32x4.extend_${half}_i16x8_u ${v}) (i32.const 16))`,
  F16: (v) => `(v128.or
      (f32x4.mul (i32x4.shl (v128.and (local.tee $h (i32x4.extend_${half}_i16x8_u ${v})) (local.get $k7fff32)) (i32.const 13)) (local.get $kF16Scale))
      (v128.and (i32x4.shl (local.get $h) (i32.const 16)) (local.get $kSign)))`,
});
const WIDEN_LO = WIDEN('low');
const WIDEN_HI = WIDEN('high');
/** A non-negative magnitude's bits (i32 expression, bits & 0x7fff) -> its f32 value. */
const MAG_TO_F32: Record<Dtype16, (m: string) => string> = {
  BF16: (m) => `(f32.reinterpret_i32 (i32.shl ${m} (i32.const 16)))`,
  F16: (m) => `(f32.mul (f32.reinterpret_i32 (i32.shl ${m} (i32.const 13))) (f32.const 0x1p112))`,
};
/** The constants the f16 widening uses (and its scratch local $h). */
const F16_WIDEN_CONSTS = ['$k7fff32', '$kF16Scale', '$kSign'];
const C_F16 = { locals: `${CONSTS(...F16_WIDEN_CONSTS).locals} (local $h v128)`, init: CONSTS(...F16_WIDEN_CONSTS).init };

const E4M3_CONSTS = ['$kAbs', '$k80', '$k448', '$kMin8', '$kM8', '$kB8', '$kOne'];

/**
 * e4m3 code of each f32 lane of q (RNE, subnormals, clamp to 448, sign kept); uses locals $qq, $a.
 * Normal range (|q| >= 2^-6): round the f32 mantissa to 3 bits by adding 0x7ffff + its lowest kept
 * bit, then rebias the exponent (-(127-7) << 3 = -960, folded into the added constant $kB8).
 * Subnormal range: |q| + 2^14 has a ulp of 2^-9, e4m3's subnormal step, so the FPU rounds it
 * (nearest-even) and the low bits of the sum are the code. No select between the two: with |q|
 * clamped to 2^-6 for the subnormal one (which then gives 8, the smallest normal code), the right
 * code is always the larger (the normal formula is negative or smaller below 2^-6).
 */
const E4M3 = (q: string) => `
  (v128.or
    (v128.and (i32x4.shr_u (local.tee $qq ${q}) (i32.const 24)) (local.get $k80))
    (i32x4.max_s
      (i32x4.sub (f32x4.add
        (f32x4.pmin (local.tee $a (f32x4.pmin (v128.and (local.get $qq) (local.get $kAbs)) (local.get $k448))) (local.get $kMin8))
        (local.get $kM8)) (local.get $kM8))
      (i32x4.shr_s
        (i32x4.add (i32x4.add (local.get $a) (local.get $kB8))
          (v128.and (i32x4.shr_u (local.get $a) (i32.const 20)) (local.get $kOne)))
        (i32.const 20))))`;

/** Four i32x4 of byte values -> one v128 of 16 bytes. */
const NARROW_U8 = (a: string, b: string, c: string, d: string) =>
  `(i8x16.narrow_i16x8_u (i16x8.narrow_i32x4_u ${a} ${b}) (i16x8.narrow_i32x4_u ${c} ${d}))`;
const NARROW_S8 = (a: string, b: string, c: string, d: string) =>
  `(i8x16.narrow_i16x8_s (i16x8.narrow_i32x4_s ${a} ${b}) (i16x8.narrow_i32x4_s ${c} ${d}))`;

/** |bits| of the 8 bf16 or f16 lanes at addr (integer order is |value| order for finite values). */
const ABS16 = (addr: string) => `(v128.and (v128.load ${addr}) (v128.const i16x8 0x7fff 0x7fff 0x7fff 0x7fff 0x7fff 0x7fff 0x7fff 0x7fff))`;
const HMAX16 = (v: string) => `
  (local.set $m (i16x8.extract_lane_u 0 ${v}))
  ${[1, 2, 3, 4, 5, 6, 7].map((i) => `(if (i32.gt_u (i16x8.extract_lane_u ${i} ${v}) (local.get $m)) (then (local.set $m (i16x8.extract_lane_u ${i} ${v}))))`).join('\n  ')}`;

const C_E4 = CONSTS(...E4M3_CONSTS);
const C_I4 = CONSTS('$kRnd', '$kRndb', '$kLo4', '$kHi4', '$k7fff');
const C_NVT = CONSTS('$k7fff', '$kFF', '$k8h', '$k8000');

/**
 * NVFP4 block i of the group at $p, whose scale code is `c`, by the thresholds at $thr (see
 * nvfp4TablesForBf16): each magnitude is how many of the code's 7 thresholds |x bits| exceeds (a
 * compare gives -1 per lane, so the sum is minus the magnitude); the sign bit is set where x is
 * negative and |x bits| exceeds the 8th, tested in one signed compare of x ^ 0x8000 (as i16 that is
 * |x bits| for negative x and negative for positive x, while the threshold is >= 0). The 16 codes
 * go to $o + 16i, or packed to $pk + 8i (u16 lane = even | odd << 8 -> byte even | odd << 4). Each block ends with its store:
 * two blocks with no store between them had TurboFan hoist both blocks' 16 threshold loads and spill.
 */
const NV_BLOCK = (i: number, c: string, codes: boolean) => `
      (local.set $row (i32.add (local.get $thr) (i32.shl ${c} (i32.const 4))))
      (local.set $xa (v128.and (v128.load offset=${32 * i} (local.get $p)) (local.get $k7fff)))
      (local.set $ya (v128.and (v128.load offset=${32 * i + 16} (local.get $p)) (local.get $k7fff)))
      (local.set $t (v128.load16_splat (local.get $row)))
      (local.set $ex (i16x8.gt_s (local.get $xa) (local.get $t)))
      (local.set $ey (i16x8.gt_s (local.get $ya) (local.get $t)))
      ${[1, 2, 3, 4, 5, 6].map((k) => `(local.set $t (v128.load16_splat offset=${2 * k} (local.get $row)))
      (local.set $ex (i16x8.add (local.get $ex) (i16x8.gt_s (local.get $xa) (local.get $t))))
      (local.set $ey (i16x8.add (local.get $ey) (i16x8.gt_s (local.get $ya) (local.get $t))))`).join('\n      ')}
      (local.set $t (v128.load16_splat offset=14 (local.get $row)))
      (local.set $u (i8x16.narrow_i16x8_u
        (i16x8.sub (v128.and (i16x8.gt_s (v128.xor (v128.load offset=${32 * i} (local.get $p)) (local.get $k8000)) (local.get $t)) (local.get $k8h)) (local.get $ex))
        (i16x8.sub (v128.and (i16x8.gt_s (v128.xor (v128.load offset=${32 * i + 16} (local.get $p)) (local.get $k8000)) (local.get $t)) (local.get $k8h)) (local.get $ey))))
      ${codes ? `(v128.store offset=${16 * i} (local.get $o) (local.get $u))` : `(v128.store64_lane offset=${8 * i} 0 (local.get $pk) (i8x16.narrow_i16x8_u (local.tee $u (v128.and (v128.or (local.get $u) (i16x8.shr_u (local.get $u) (i32.const 4))) (local.get $kFF))) (local.get $u)))`}`;

/** u16 lanes whose max is block i's max |bits| (block i of the group at $p). */
const NV_MAX = (i: number) =>
  `(i16x8.max_u (v128.and (v128.load offset=${32 * i} (local.get $p)) (local.get $k7fff)) (v128.and (v128.load offset=${32 * i + 16} (local.get $p)) (local.get $k7fff)))`;

/**
 * NVFP4 over nblk blocks of 16 bf16 or f16 by the tables at $tab (nvfp4TablesForBf16 or
 * nvfp4TablesForF16 of ws2): the e4m3 scale code of a block is the table entry of its max |bits|,
 * its codes come from compares against that code's thresholds (NV_BLOCK). Scales to scales[b]; to
 * $out either the codes packed two per byte (even element low, 8 bytes per block: what a checkpoint
 * stores) or one code per element. Two functions,
 * not a flag: a branch in the loop body makes TurboFan load every threshold ahead of it and spill
 * them. Four blocks per iteration, then one at a time.
 */
const NVFP4_TABLE_FN = (name: string, codes: boolean) => `  (func (export "${name}") (param $src i32) (param $nblk i32) (param $tab i32) (param $scales i32) (param $out i32)
    (local $b i32) (local $end4 i32) (local $p i32) (local $o i32) (local $pk i32) (local $row i32) (local $thr i32)
    (local $c0 i32) (local $c1 i32) (local $c2 i32) (local $c3 i32)
    (local $m0 v128) (local $m1 v128) (local $s v128)
    (local $xa v128) (local $ya v128) (local $t v128) (local $ex v128) (local $ey v128) (local $u v128)
    ${C_NVT.locals}
    ${C_NVT.init}
    (local.set $thr (i32.add (local.get $tab) (i32.const ${NVFP4_SCALE_TABLE})))
    (local.set $end4 (i32.and (local.get $nblk) (i32.const -4)))
    (block $done (loop $l
      (br_if $done (i32.ge_u (local.get $b) (local.get $end4)))
      (local.set $p (i32.add (local.get $src) (i32.shl (local.get $b) (i32.const 5))))
      (local.set $o (i32.add (local.get $out) (i32.shl (local.get $b) (i32.const 4))))
      (local.set $pk (i32.add (local.get $out) (i32.shl (local.get $b) (i32.const 3))))
      ;; the four block maxima: u16 lanes 0-3 of $m0 block 0, 4-7 block 1; $m1 blocks 2, 3; then
      ;; two u16 per 32-bit lane of $s, lane i = block i, and the max of each pair in its low half
      (local.set $m0 ${NV_MAX(0)})
      (local.set $m1 ${NV_MAX(1)})
      (local.set $m0 (i16x8.max_u (i8x16.shuffle 0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23 (local.get $m0) (local.get $m1))
                                  (i8x16.shuffle 8 9 10 11 12 13 14 15 24 25 26 27 28 29 30 31 (local.get $m0) (local.get $m1))))
      (local.set $s ${NV_MAX(2)})
      (local.set $m1 ${NV_MAX(3)})
      (local.set $m1 (i16x8.max_u (i8x16.shuffle 0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23 (local.get $s) (local.get $m1))
                                  (i8x16.shuffle 8 9 10 11 12 13 14 15 24 25 26 27 28 29 30 31 (local.get $s) (local.get $m1))))
      (local.set $s (i16x8.max_u (i8x16.shuffle 0 1 2 3 8 9 10 11 16 17 18 19 24 25 26 27 (local.get $m0) (local.get $m1))
                                 (i8x16.shuffle 4 5 6 7 12 13 14 15 20 21 22 23 28 29 30 31 (local.get $m0) (local.get $m1))))
      (local.set $s (i16x8.max_u (local.get $s) (i32x4.shr_u (local.get $s) (i32.const 16))))
      (local.set $c0 (i32.load8_u (i32.add (local.get $tab) (i16x8.extract_lane_u 0 (local.get $s)))))
      (local.set $c1 (i32.load8_u (i32.add (local.get $tab) (i16x8.extract_lane_u 2 (local.get $s)))))
      (local.set $c2 (i32.load8_u (i32.add (local.get $tab) (i16x8.extract_lane_u 4 (local.get $s)))))
      (local.set $c3 (i32.load8_u (i32.add (local.get $tab) (i16x8.extract_lane_u 6 (local.get $s)))))
      (i32.store (i32.add (local.get $scales) (local.get $b))
        (i32.or (i32.or (local.get $c0) (i32.shl (local.get $c1) (i32.const 8)))
                (i32.or (i32.shl (local.get $c2) (i32.const 16)) (i32.shl (local.get $c3) (i32.const 24)))))
      ${NV_BLOCK(0, '(local.get $c0)', codes)}
      ${NV_BLOCK(1, '(local.get $c1)', codes)}
      ${NV_BLOCK(2, '(local.get $c2)', codes)}
      ${NV_BLOCK(3, '(local.get $c3)', codes)}
      (local.set $b (i32.add (local.get $b) (i32.const 4)))
      (br $l)))
    (block $done1 (loop $l1
      (br_if $done1 (i32.ge_u (local.get $b) (local.get $nblk)))
      (local.set $p (i32.add (local.get $src) (i32.shl (local.get $b) (i32.const 5))))
      (local.set $o (i32.add (local.get $out) (i32.shl (local.get $b) (i32.const 4))))
      (local.set $pk (i32.add (local.get $out) (i32.shl (local.get $b) (i32.const 3))))
      (local.set $m0 ${NV_MAX(0)})
      (local.set $m0 (i16x8.max_u (local.get $m0) (i8x16.shuffle 8 9 10 11 12 13 14 15 0 1 2 3 4 5 6 7 (local.get $m0) (local.get $m0))))
      (local.set $m0 (i16x8.max_u (local.get $m0) (i8x16.shuffle 4 5 6 7 0 1 2 3 4 5 6 7 0 1 2 3 (local.get $m0) (local.get $m0))))
      (local.set $m0 (i16x8.max_u (local.get $m0) (i8x16.shuffle 2 3 0 1 2 3 0 1 2 3 0 1 2 3 0 1 (local.get $m0) (local.get $m0))))
      (local.set $c0 (i32.load8_u (i32.add (local.get $tab) (i16x8.extract_lane_u 0 (local.get $m0)))))
      (i32.store8 (i32.add (local.get $scales) (local.get $b)) (local.get $c0))
      ${NV_BLOCK(0, '(local.get $c0)', codes)}
      (local.set $b (i32.add (local.get $b) (i32.const 1)))
      (br $l1))))`;

/**
 * The f32 lanes of q (held in the v128 local `tmp` as well) plus the bf16 rounding increment, 0x7fff
 * and the lowest bit kept: the high 16 bits of each lane are then q rounded to bf16, nearest-even.
 */
const BF16_ROUND_SUM = (q: string, tmp: string) =>
  `(i32x4.add (i32x4.add (local.tee ${tmp} ${q}) (local.get $k7fff32)) (v128.and (i32x4.shr_u (local.get ${tmp}) (i32.const 16)) (local.get $kOne)))`;

/**
 * bf16 bits (in the low half of each i32 lane) of the f32 lanes of q, rounded to nearest even as
 * torch (and f32ToBf16) rounds: add 0x7fff plus the lowest kept bit, keep the high half. Exact for
 * every finite value and infinities; a NaN stays a NaN (its sign and payload may differ from JS's
 * 0x7fc0, and a NaN only reaches here on the way to an error).
 */
const F32_TO_BF16 = (q: string) => `(i32x4.shr_u ${BF16_ROUND_SUM(q, '$q')} (i32.const 16))`;

/**
 * f16 bits (low half of each i32 lane) of the f32 lanes of q, round-to-nearest-even as f32ToF16:
 * normal range by the integer add of F32_TO_BF16 at bit 13 after rebiasing the exponent by -112;
 * below 2^-14, |q| + 0.5 (whose ulp is f16's subnormal step 2^-24) rounds in the FPU and its low bits
 * are the code; the larger of the two is right (as in E4M3); at or past 65520, infinity. Finite q
 * only (a NaN would come out as infinity). Uses locals $q, $a.
 */
const F32_TO_F16 = (q: string) => `
  (v128.or
    (i32x4.min_s
      (i32x4.max_s
        (i32x4.shr_s (i32x4.add (i32x4.add (local.tee $a (v128.and (local.tee $q ${q}) (local.get $kAbs))) (local.get $kB16)) (v128.and (i32x4.shr_u (local.get $a) (i32.const 13)) (local.get $kOne))) (i32.const 13))
        (i32x4.sub (f32x4.add (f32x4.pmin (local.get $a) (local.get $kMinF16)) (local.get $kHalf)) (local.get $kHalf)))
      (local.get $k7c00))
    (v128.and (i32x4.shr_u (local.get $q) (i32.const 16)) (local.get $k8000lo)))`;

/**
 * An AWQ edit of bf16 or f16 rows in place (weight-ops.ts): each 8 elements at $p + 2k are widened
 * to f32, edited by `f(x, i)` (i = 0 for elements 0-3, 1 for 4-7; `f` may read $k), rounded back.
 */
const EDIT_ROWS = (name: string, dtype: Dtype16, params: string, rowInit: string, f: (x: string, i: number) => string) => {
  const c = dtype === 'BF16' ? CONSTS('$k7fff32', '$kOne') : CONSTS(...F16_WIDEN_CONSTS, '$kOne', '$kAbs', '$kB16', '$kMinF16', '$kHalf', '$k7c00', '$k8000lo');
  const narrow = dtype === 'BF16' ? F32_TO_BF16 : F32_TO_F16;
  return `
  (func (export "${name}") (param $src i32) (param $rows i32) (param $K i32) ${params}
    (local $r i32) (local $k i32) (local $p i32) (local $v v128) (local $q v128) (local $a v128) (local $h v128) (local $sv v128) ${c.locals}
    ${c.init}
    (block $done (loop $lr
      (br_if $done (i32.ge_u (local.get $r) (local.get $rows)))
      (local.set $p (i32.add (local.get $src) (i32.shl (i32.mul (local.get $r) (local.get $K)) (i32.const 1))))
      ${rowInit}
      (local.set $k (i32.const 0))
      (block $dk (loop $lk
        (br_if $dk (i32.ge_u (local.get $k) (local.get $K)))
        (local.set $v (v128.load (i32.add (local.get $p) (i32.shl (local.get $k) (i32.const 1)))))
        (v128.store (i32.add (local.get $p) (i32.shl (local.get $k) (i32.const 1)))
          (i16x8.narrow_i32x4_u
            ${narrow(f(WIDEN_LO[dtype]('(local.get $v)'), 0))}
            ${narrow(f(WIDEN_HI[dtype]('(local.get $v)'), 1))}))
        (local.set $k (i32.add (local.get $k) (i32.const 8)))
        (br $lk)))
      (local.set $r (i32.add (local.get $r) (i32.const 1)))
      (br $lr))))`;
};

/** f32 lanes k..k+3 (i = 0) or k+4..k+7 (i = 1) of the f32 vector at `base`. */
const COL = (base: string, i: number) => `(v128.load offset=${16 * i} (i32.add (local.get ${base}) (i32.shl (local.get $k) (i32.const 2))))`;

/** The AWQ edits of weight-ops.ts on bf16 or f16 rows [0, rows) of width K (K % 8 == 0), in place. */
const WEIGHT_OPS_WAT = (['BF16', 'F16'] as const)
  .map((dtype) => {
    const sfx = dtype === 'BF16' ? '' : '_f16';
    return [
      // w[r, k] <- dtype(w[r, k] / s[k])
      EDIT_ROWS(`ops_div_col${sfx}`, dtype, '(param $s i32)', '', (x, i) => `(f32x4.div ${x} ${COL('$s', i)})`),
      // w[r, k] <- dtype(w[r, k] * s[r]), s = this chunk's rows
      EDIT_ROWS(`ops_mul_row${sfx}`, dtype, '(param $s i32)', '(local.set $sv (v128.load32_splat (i32.add (local.get $s) (i32.shl (local.get $r) (i32.const 2)))))', (x) => `(f32x4.mul ${x} (local.get $sv))`),
      // w[r, k] <- dtype(f32(w[r, k] * old[k]) / new[k])
      EDIT_ROWS(`ops_resmooth${sfx}`, dtype, '(param $old i32) (param $new i32)', '', (x, i) => `(f32x4.div (f32x4.mul ${x} ${COL('$old', i)}) ${COL('$new', i)})`),
    ].join('\n');
  })
  .join('\n');

/** INT4 over groups of 128 of a bf16 or f16 weight (see the function's own comment). */
const INT4_FN = (name: string, dtype: Dtype16) => `  ;; INT4 over groups of 128 bf16 or f16 (K % 128 == 0): scale = amax/7 (zero -> 1) as f32, q = rne(w/scale) in [-8, 7]
  (func (export "${name}") (param $src i32) (param $ngroups i32) (param $codes i32) (param $scales i32)
    (local $g i32) (local $p i32) (local $j i32) (local $v v128) (local $mx v128) (local $s f32) (local $sv v128) (local $q i32) ${C_I4.locals} ${dtype === 'F16' ? C_F16.locals : ''}
    ${C_I4.init}
    ${dtype === 'F16' ? C_F16.init : ''}
    (block $done (loop $l
      (br_if $done (i32.ge_u (local.get $g) (local.get $ngroups)))
      (local.set $p (i32.add (local.get $src) (i32.shl (local.get $g) (i32.const 8))))
      ;; max |w| of the group on the 16-bit patterns: a tree over its 16 vectors, not a chain through one
      ;; accumulator
      (local.set $mx ${I4_AMAX_TREE(0, 16)})
      ;; horizontal max of the 8 u16 lanes, then its value as f32
      (local.set $mx (i16x8.max_u (local.get $mx) (i8x16.shuffle 8 9 10 11 12 13 14 15 0 1 2 3 4 5 6 7 (local.get $mx) (local.get $mx))))
      (local.set $mx (i16x8.max_u (local.get $mx) (i8x16.shuffle 4 5 6 7 0 1 2 3 4 5 6 7 0 1 2 3 (local.get $mx) (local.get $mx))))
      (local.set $mx (i16x8.max_u (local.get $mx) (i8x16.shuffle 2 3 0 1 2 3 0 1 2 3 0 1 2 3 0 1 (local.get $mx) (local.get $mx))))
      (local.set $s ${MAG_TO_F32[dtype]('(i16x8.extract_lane_u 0 (local.get $mx))')})
      (local.set $s (if (result f32) (f32.eq (local.get $s) (f32.const 0)) (then (f32.const 1)) (else (f32.div (local.get $s) (f32.const 7)))))
      (f32.store (i32.add (local.get $scales) (i32.shl (local.get $g) (i32.const 2))) (local.get $s))
      (local.set $sv (f32x4.splat (local.get $s)))
      (local.set $j (i32.const 0))
      (block $d2 (loop $l2
        (br_if $d2 (i32.ge_u (local.get $j) (i32.const 256)))
        (local.set $v (v128.load (i32.add (local.get $p) (local.get $j))))
        (local.set $mx (v128.load offset=16 (i32.add (local.get $p) (local.get $j))))
        (v128.store (i32.add (i32.add (local.get $codes) (i32.shl (local.get $g) (i32.const 7))) (i32.shr_u (local.get $j) (i32.const 1)))
          ${NARROW_S8(
            Q4(WIDEN_LO[dtype]('(local.get $v)')),
            Q4(WIDEN_HI[dtype]('(local.get $v)')),
            Q4(WIDEN_LO[dtype]('(local.get $mx)')),
            Q4(WIDEN_HI[dtype]('(local.get $mx)')),
          )})
        (local.set $j (i32.add (local.get $j) (i32.const 32)))
        (br $l2)))
      (local.set $g (i32.add (local.get $g) (i32.const 1)))
      (br $l))))`;

/** FP8 128x128 tiles of a bf16 or f16 weight (see the function's own comment). */
const FP8_BLOCK_FN = (name: string, dtype: Dtype16) => `  ;; FP8 128x128 tiles over rows [0, rows) of a bf16 or f16 [rows, K] band set (K % 128 == 0):
  ;; scales[band * BK + tile] = tileAmax/448 (zero -> 1), codes = e4m3(w / scale).
  ;; Both passes walk rows in memory order; the per-tile |bits| maxima live at the start of the
  ;; band's codes (overwritten by the codes in the second pass, after the scales are taken).
  (func (export "${name}") (param $src i32) (param $rows i32) (param $K i32) (param $codes i32) (param $scales i32)
    (local $band i32) (local $r0 i32) (local $nr i32) (local $tb i32) (local $BK i32) (local $r i32) (local $j i32)
    (local $p i32) (local $acc v128) (local $m i32) (local $s f32) (local $sv v128) (local $v v128) (local $w v128) (local $a v128) (local $o i32) (local $qq v128)
    (local $accs i32) (local $row i32) ${C_E4.locals} ${dtype === 'F16' ? C_F16.locals : ''}
    ${C_E4.init}
    ${dtype === 'F16' ? C_F16.init : ''}
    (local.set $BK (i32.shr_u (local.get $K) (i32.const 7)))
    (block $done (loop $lb
      (local.set $r0 (i32.shl (local.get $band) (i32.const 7)))
      (br_if $done (i32.ge_u (local.get $r0) (local.get $rows)))
      (local.set $nr (i32.sub (local.get $rows) (local.get $r0)))
      (if (i32.gt_u (local.get $nr) (i32.const 128)) (then (local.set $nr (i32.const 128))))
      (local.set $accs (i32.add (local.get $codes) (i32.mul (local.get $r0) (local.get $K))))
      ;; pass 1: per-tile maxima of |bits|, row by row
      (local.set $tb (i32.const 0))
      (block $dz (loop $lz
        (br_if $dz (i32.ge_u (local.get $tb) (local.get $BK)))
        (v128.store (i32.add (local.get $accs) (i32.shl (local.get $tb) (i32.const 4))) (v128.const i32x4 0 0 0 0))
        (local.set $tb (i32.add (local.get $tb) (i32.const 1)))
        (br $lz)))
      (local.set $r (i32.const 0))
      (block $dr (loop $lr
        (br_if $dr (i32.ge_u (local.get $r) (local.get $nr)))
        (local.set $row (i32.add (local.get $src) (i32.shl (i32.mul (i32.add (local.get $r0) (local.get $r)) (local.get $K)) (i32.const 1))))
        (local.set $tb (i32.const 0))
        (block $dt (loop $lt
          (br_if $dt (i32.ge_u (local.get $tb) (local.get $BK)))
          (local.set $p (i32.add (local.get $row) (i32.shl (local.get $tb) (i32.const 8))))
          (local.set $acc (v128.load (i32.add (local.get $accs) (i32.shl (local.get $tb) (i32.const 4)))))
          (local.set $j (i32.const 0))
          (block $dj (loop $lj
            (br_if $dj (i32.ge_u (local.get $j) (i32.const 256)))
            (local.set $acc (i16x8.max_u (local.get $acc) ${ABS16('(i32.add (local.get $p) (local.get $j))')}))
            (local.set $acc (i16x8.max_u (local.get $acc) ${ABS16('(i32.add (i32.add (local.get $p) (local.get $j)) (i32.const 16))')}))
            (local.set $j (i32.add (local.get $j) (i32.const 32)))
            (br $lj)))
          (v128.store (i32.add (local.get $accs) (i32.shl (local.get $tb) (i32.const 4))) (local.get $acc))
          (local.set $tb (i32.add (local.get $tb) (i32.const 1)))
          (br $lt)))
        (local.set $r (i32.add (local.get $r) (i32.const 1)))
        (br $lr)))
      ;; the scales
      (local.set $tb (i32.const 0))
      (block $ds (loop $ls
        (br_if $ds (i32.ge_u (local.get $tb) (local.get $BK)))
        (local.set $acc (v128.load (i32.add (local.get $accs) (i32.shl (local.get $tb) (i32.const 4)))))
        ${HMAX16('(local.get $acc)')}
        (local.set $s ${MAG_TO_F32[dtype]('(local.get $m)')})
        (local.set $s (if (result f32) (f32.eq (local.get $s) (f32.const 0)) (then (f32.const 1)) (else (f32.div (local.get $s) (f32.const 448)))))
        (f32.store (i32.add (local.get $scales) (i32.shl (i32.add (i32.mul (local.get $band) (local.get $BK)) (local.get $tb)) (i32.const 2))) (local.get $s))
        (local.set $tb (i32.add (local.get $tb) (i32.const 1)))
        (br $ls)))
      ;; pass 2: codes, row by row
      (local.set $r (i32.const 0))
      (block $dq (loop $lq
        (br_if $dq (i32.ge_u (local.get $r) (local.get $nr)))
        (local.set $tb (i32.const 0))
        (block $dk2 (loop $lk2
          (br_if $dk2 (i32.ge_u (local.get $tb) (local.get $BK)))
          (local.set $sv (v128.load32_splat (i32.add (local.get $scales) (i32.shl (i32.add (i32.mul (local.get $band) (local.get $BK)) (local.get $tb)) (i32.const 2)))))
          (local.set $o (i32.add (i32.mul (i32.add (local.get $r0) (local.get $r)) (local.get $K)) (i32.shl (local.get $tb) (i32.const 7))))
          (local.set $p (i32.add (local.get $src) (i32.shl (local.get $o) (i32.const 1))))
          (local.set $j (i32.const 0))
          (block $dk (loop $lk
            (br_if $dk (i32.ge_u (local.get $j) (i32.const 256)))
            (local.set $v (v128.load (i32.add (local.get $p) (local.get $j))))
            (local.set $w (v128.load offset=16 (i32.add (local.get $p) (local.get $j))))
            (v128.store (i32.add (i32.add (local.get $codes) (local.get $o)) (i32.shr_u (local.get $j) (i32.const 1)))
              ${NARROW_U8(
                E4M3(`(f32x4.div ${WIDEN_LO[dtype]('(local.get $v)')} (local.get $sv))`),
                E4M3(`(f32x4.div ${WIDEN_HI[dtype]('(local.get $v)')} (local.get $sv))`),
                E4M3(`(f32x4.div ${WIDEN_LO[dtype]('(local.get $w)')} (local.get $sv))`),
                E4M3(`(f32x4.div ${WIDEN_HI[dtype]('(local.get $w)')} (local.get $sv))`),
              )})
            (local.set $j (i32.add (local.get $j) (i32.const 32)))
            (br $lk)))
          (local.set $tb (i32.add (local.get $tb) (i32.const 1)))
          (br $lk2)))
        (local.set $r (i32.add (local.get $r) (i32.const 1)))
        (br $lq)))
      (local.set $band (i32.add (local.get $band) (i32.const 1)))
      (br $lb))))`;

/** f32x4 lanes rounded to bf16 (nearest-even; finite values, as the scan pass guarantees), kept as f32: the low 16 bits of BF16_ROUND_SUM cleared. */
const RNE_BF16 = (q: string) => `(v128.and ${BF16_ROUND_SUM(q, '$b')} (local.get $kHi16))`;

/**
 * FP8 per-tensor codes of n bf16 weights (n % 16 == 0) by arithmetic instead of the 64K-entry
 * table: dst[i] = e4m3(bf16(f32(w[i]) / scale)), the quotient rounded to bf16 first as torch keeps
 * a bf16 tensor's dtype, then to e4m3 (nearest-even, clamped to 448). The same bytes as lut16 with
 * fp8LutForBf16(scale) for finite weights; which of the two is faster depends on the CPU (a byte
 * load per element against ~30 vector operations per 4), so each kernel thread times both on its
 * first chunks (src/kernels/tasks.ts).
 */
const FP8_SCALED_FN = `  (func (export "fp8_scaled") (param $src i32) (param $n i32) (param $scale f32) (param $dst i32)
    (local $p i32) (local $d i32) (local $end i32) (local $sv v128) (local $v v128) (local $w v128) (local $b v128) (local $qq v128) (local $a v128)
    ${CONSTS(...E4M3_CONSTS, '$k7fff32', '$kHi16').locals}
    ${CONSTS(...E4M3_CONSTS, '$k7fff32', '$kHi16').init}
    (local.set $sv (f32x4.splat (local.get $scale)))
    (local.set $p (local.get $src))
    (local.set $d (local.get $dst))
    (local.set $end (i32.add (local.get $dst) (local.get $n)))
    (block $done (loop $l
      (br_if $done (i32.ge_u (local.get $d) (local.get $end)))
      (local.set $v (v128.load (local.get $p)))
      (local.set $w (v128.load offset=16 (local.get $p)))
      (v128.store (local.get $d)
        ${NARROW_U8(
          E4M3(RNE_BF16(`(f32x4.div ${WIDEN_LO.BF16('(local.get $v)')} (local.get $sv))`)),
          E4M3(RNE_BF16(`(f32x4.div ${WIDEN_HI.BF16('(local.get $v)')} (local.get $sv))`)),
          E4M3(RNE_BF16(`(f32x4.div ${WIDEN_LO.BF16('(local.get $w)')} (local.get $sv))`)),
          E4M3(RNE_BF16(`(f32x4.div ${WIDEN_HI.BF16('(local.get $w)')} (local.get $sv))`)),
        )})
      (local.set $p (i32.add (local.get $p) (i32.const 32)))
      (local.set $d (i32.add (local.get $d) (i32.const 16)))
      (br $l))))`;

/**
 * Four e4m3 codes (i32x4 lanes 0..255) -> the bf16 bits of f32(e4m3) * $s, as expandFp8Block's table
 * gives them: e4m3 as f32 (exponent e > 0: the magnitude's 7 bits shifted to f32's exponent and
 * mantissa, exponent rebiased by 120; e = 0: m * 2^-9), the sign, one f32 multiply (the exact
 * product rounded once, as Math.fround of the double product), then round-to-nearest-even to bf16;
 * NaN (the codes 0x7f / 0xff, or a NaN product) as 0x7fc0.
 */
const E4M3_TO_BF16 = (x: string) => `(local.set $c4 ${x})
        (local.set $m4 (v128.and (local.get $c4) (local.get $k7F)))
        (local.set $f4 (f32x4.mul
          (v128.or
            (v128.bitselect
              (f32x4.mul (f32x4.convert_i32x4_s (v128.and (local.get $c4) (local.get $k7i))) (local.get $k2m9))
              (i32x4.add (i32x4.shl (local.get $m4) (i32.const 20)) (local.get $kE120))
              (i32x4.lt_s (local.get $m4) (local.get $k8i)))
            (i32x4.shl (v128.and (local.get $c4) (local.get $k80)) (i32.const 24)))
          (local.get $s)))
        (v128.bitselect
          (local.get $k7fc0)
          (i32x4.shr_u ${BF16_ROUND_SUM('(local.get $f4)', '$f4')} (i32.const 16))
          (v128.or (f32x4.ne (local.get $f4) (local.get $f4)) (i32x4.eq (local.get $m4) (local.get $k7F))))`;

const FP8_EXPAND_CONSTS = CONSTS('$k7F', '$kE120', '$k7i', '$k8i', '$k2m9', '$k7fc0', '$k80', '$k7fff32', '$kOne');

/**
 * FP8-block codes [rows, K] (K % 128 == 0) at the start of $src expanded in place to bf16: each
 * code times the scale of its 128x128 tile (row r's tile row is ($phase + r) / 128; scales at
 * $scales + 4 * (tileRow * $BK + tile column)). Backwards, 16 codes at a time, every vector loaded
 * before its 32 output bytes are stored: output byte 2i is never below code i, so no code is
 * overwritten before it is read (as expandFp8Block walks).
 */
const FP8_EXPAND_FN = `  (func (export "fp8_block_expand") (param $src i32) (param $rows i32) (param $K i32) (param $scales i32) (param $BK i32) (param $phase i32)
    (local $r i32) (local $tc i32) (local $c i32) (local $col i32) (local $rowIn i32) (local $rowOut i32)
    (local $s v128) (local $b v128) (local $w v128) (local $c4 v128) (local $m4 v128) (local $f4 v128) (local $v0 v128)
    ${FP8_EXPAND_CONSTS.locals}
    ${FP8_EXPAND_CONSTS.init}
    (local.set $r (local.get $rows))
    (block $done (loop $lr
      (br_if $done (i32.eqz (local.get $r)))
      (local.set $r (i32.sub (local.get $r) (i32.const 1)))
      (local.set $rowIn (i32.add (local.get $src) (i32.mul (local.get $r) (local.get $K))))
      (local.set $rowOut (i32.add (local.get $src) (i32.shl (i32.mul (local.get $r) (local.get $K)) (i32.const 1))))
      (local.set $tc (local.get $BK))
      (block $d2 (loop $lt
        (br_if $d2 (i32.eqz (local.get $tc)))
        (local.set $tc (i32.sub (local.get $tc) (i32.const 1)))
        (local.set $s (f32x4.splat (f32.load (i32.add (local.get $scales)
          (i32.shl (i32.add (i32.mul (i32.shr_u (i32.add (local.get $phase) (local.get $r)) (i32.const 7)) (local.get $BK)) (local.get $tc)) (i32.const 2))))))
        (local.set $c (i32.const 128))
        (block $d3 (loop $lc
          (br_if $d3 (i32.eqz (local.get $c)))
          (local.set $c (i32.sub (local.get $c) (i32.const 16)))
          (local.set $col (i32.add (i32.shl (local.get $tc) (i32.const 7)) (local.get $c)))
          (local.set $b (v128.load (i32.add (local.get $rowIn) (local.get $col))))
          (local.set $w (i16x8.extend_high_i8x16_u (local.get $b)))
          (local.set $v0 ${E4M3_TO_BF16('(i32x4.extend_low_i16x8_u (local.get $w))')})
          (v128.store offset=16 (i32.add (local.get $rowOut) (i32.shl (local.get $col) (i32.const 1)))
            (i16x8.narrow_i32x4_u (local.get $v0) ${E4M3_TO_BF16('(i32x4.extend_high_i16x8_u (local.get $w))')}))
          (local.set $w (i16x8.extend_low_i8x16_u (local.get $b)))
          (local.set $v0 ${E4M3_TO_BF16('(i32x4.extend_low_i16x8_u (local.get $w))')})
          (v128.store (i32.add (local.get $rowOut) (i32.shl (local.get $col) (i32.const 1)))
            (i16x8.narrow_i32x4_u (local.get $v0) ${E4M3_TO_BF16('(i32x4.extend_high_i16x8_u (local.get $w))')}))
          (br $lc)))
        (br $lt)))
      (br $lr))))`;

const TILE_MAX_CONSTS = CONSTS('$k7Fb');

/**
 * The largest code magnitude (code & 0x7f: e4m3's magnitudes are ordered as these bytes, 0x7f being
 * NaN) of every 128x128 tile of FP8-block codes [rows, K] (K % 128 == 0) at $src: byte-wise maxima
 * kept in a v128 per tile at $acc + 16 * (tileRow * $BK + tile column), row r in tile row
 * ($phase + r) / 128; the caller zeroes them first and takes each one's horizontal max.
 */
const FP8_TILE_MAX_FN = `  (func (export "fp8_tile_max") (param $src i32) (param $rows i32) (param $K i32) (param $BK i32) (param $phase i32) (param $acc i32)
    (local $r i32) (local $tc i32) (local $p i32) (local $a i32) (local $v v128)
    ${TILE_MAX_CONSTS.locals}
    ${TILE_MAX_CONSTS.init}
    (block $done (loop $lr
      (br_if $done (i32.ge_u (local.get $r) (local.get $rows)))
      (local.set $p (i32.add (local.get $src) (i32.mul (local.get $r) (local.get $K))))
      (local.set $a (i32.add (local.get $acc) (i32.shl (i32.mul (i32.shr_u (i32.add (local.get $phase) (local.get $r)) (i32.const 7)) (local.get $BK)) (i32.const 4))))
      (local.set $tc (i32.const 0))
      (block $d2 (loop $lt
        (br_if $d2 (i32.ge_u (local.get $tc) (local.get $BK)))
        (local.set $v (i8x16.max_u
          (i8x16.max_u
            (i8x16.max_u (v128.load (local.get $p)) (v128.load offset=16 (local.get $p)))
            (i8x16.max_u (v128.load offset=32 (local.get $p)) (v128.load offset=48 (local.get $p))))
          (i8x16.max_u
            (i8x16.max_u (v128.load offset=64 (local.get $p)) (v128.load offset=80 (local.get $p)))
            (i8x16.max_u (v128.load offset=96 (local.get $p)) (v128.load offset=112 (local.get $p))))))
        (v128.store (local.get $a) (i8x16.max_u (v128.load (local.get $a)) (v128.and (local.get $v) (local.get $k7Fb))))
        (local.set $p (i32.add (local.get $p) (i32.const 128)))
        (local.set $a (i32.add (local.get $a) (i32.const 16)))
        (local.set $tc (i32.add (local.get $tc) (i32.const 1)))
        (br $lt)))
      (local.set $r (i32.add (local.get $r) (i32.const 1)))
      (br $lr))))`;

export const KERNELS_WAT = `
(module
  (import "env" "mem" (memory 1 65536 shared))

  ;; max over n bf16 or f16 values of (bits & 0x7fff); at or past 0x7f80 (bf16) or 0x7c00 (f16), a NaN or infinity
  (func (export "amax_bf16") (param $src i32) (param $n i32) (result i32)
    (local $acc v128) (local $acc2 v128) (local $i i32) (local $end i32) (local $m i32) (local $v i32)
    (local.set $end (i32.and (local.get $n) (i32.const -16)))
    (block $done (loop $l
      (br_if $done (i32.ge_u (local.get $i) (local.get $end)))
      (local.set $acc (i16x8.max_u (local.get $acc) ${ABS16('(i32.add (local.get $src) (i32.shl (local.get $i) (i32.const 1)))')}))
      (local.set $acc2 (i16x8.max_u (local.get $acc2) ${ABS16('(i32.add (i32.add (local.get $src) (i32.shl (local.get $i) (i32.const 1))) (i32.const 16))')}))
      (local.set $i (i32.add (local.get $i) (i32.const 16)))
      (br $l)))
    (local.set $acc (i16x8.max_u (local.get $acc) (local.get $acc2)))
    ${HMAX16('(local.get $acc)')}
    (block $done2 (loop $t
      (br_if $done2 (i32.ge_u (local.get $i) (local.get $n)))
      (local.set $v (i32.and (i32.load16_u (i32.add (local.get $src) (i32.shl (local.get $i) (i32.const 1)))) (i32.const 0x7fff)))
      (if (i32.gt_u (local.get $v) (local.get $m)) (then (local.set $m (local.get $v))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $t)))
    (local.get $m))

  ${NVFP4_TABLE_FN('nvfp4_packed', false)}
  ${NVFP4_TABLE_FN('nvfp4_codes', true)}

  ${WEIGHT_OPS_WAT}

  ${INT4_FN('int4', 'BF16')}
  ${INT4_FN('int4_f16', 'F16')}

  ;; int4 codes [rows, K] (rows even, K % 16 == 0) packed by row pairs: dst[i, k] = q[2i, k] & 15 | q[2i+1, k] << 4
  (func (export "pack_int4_rows") (param $q i32) (param $rows i32) (param $K i32) (param $dst i32)
    (local $i i32) (local $k i32) (local $lo i32) (local $o i32)
    (block $done (loop $l
      (br_if $done (i32.ge_u (i32.shl (local.get $i) (i32.const 1)) (local.get $rows)))
      (local.set $lo (i32.add (local.get $q) (i32.mul (i32.shl (local.get $i) (i32.const 1)) (local.get $K))))
      (local.set $o (i32.add (local.get $dst) (i32.mul (local.get $i) (local.get $K))))
      (local.set $k (i32.const 0))
      (block $d2 (loop $l2
        (br_if $d2 (i32.ge_u (local.get $k) (local.get $K)))
        (v128.store (i32.add (local.get $o) (local.get $k))
          (v128.or
            (v128.and (v128.load (i32.add (local.get $lo) (local.get $k))) (v128.const i8x16 15 15 15 15 15 15 15 15 15 15 15 15 15 15 15 15))
            (i8x16.shl (v128.load (i32.add (i32.add (local.get $lo) (local.get $K)) (local.get $k))) (i32.const 4))))
        (local.set $k (i32.add (local.get $k) (i32.const 16)))
        (br $l2)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $l))))

  ${FP8_BLOCK_FN('fp8_block', 'BF16')}
  ${FP8_BLOCK_FN('fp8_block_f16', 'F16')}

${FP8_EXPAND_FN}

${FP8_TILE_MAX_FN}

${FP8_SCALED_FN}
)
`;

/** Max of |16-bit patterns| (u16 lanes; integer order is |value| order) over vectors [i, i + n) of the group at $p, as a balanced tree. */
function I4_AMAX_TREE(i: number, n: number): string {
  if (n === 1) return `(v128.and (v128.load offset=${16 * i} (local.get $p)) (local.get $k7fff))`;
  return `(i16x8.max_u ${I4_AMAX_TREE(i, n / 2)} ${I4_AMAX_TREE(i + n / 2, n / 2)})`;
}

/**
 * rne(x / scale) clamped to [-8, 7], as i32x4 ($sv holds the splatted scale): adding 1.5 * 2^23 puts
 * |v| < 2^22 where the ulp is 1, so the FPU rounds and the low bits are the signed integer.
 */
function Q4(x: string): string {
  return `(i32x4.min_s (i32x4.max_s (i32x4.sub (f32x4.add (f32x4.div ${x} (local.get $sv)) (local.get $kRnd)) (local.get $kRndb)) (local.get $kLo4)) (local.get $kHi4))`;
}

/**
 * Stand-in for the FP8 lookup table's address in LUT16_WAT, encoded in 5 LEB128 bytes (as every
 * address is once patched, see wasm.ts): the table sits at a fixed address per slot, and a constant
 * offset folds it into each lookup, where an address held in a local costs an add per element.
 */
export const LUT_ADDRESS_STAND_IN = 0xf7e5d3c1;
/** Lookups per iteration of LUT16_WAT's main loop, plus the tail's one: how many times the stand-in appears. */
export const LUT16_LOOKUPS = 65;

/** Table lookup of the 16 bits in `bits` (an i32 expression) stored as byte `off` of the codes. */
const LOOKUP = (off: number, bits: string) => `(i32.store8 offset=${off} (local.get $d) (i32.load8_u offset=${LUT_ADDRESS_STAND_IN} ${bits}))`;

/**
 * dst[i] = table[16 bits of src[i]] (bf16 or f16) with the 64K-entry table (FP8 per-tensor: bit-exact for any
 * formula) at the address patched over LUT_ADDRESS_STAND_IN. 64 elements per iteration, read four
 * at a time with an i64 load split into two i32 halves (measured 9.7 GB/s per core against 9.2 with
 * a shift of the i64 per element, 8.2 with a 16-bit load each and 6.7 with the table's address in a
 * local and 4 per iteration).
 */
export const LUT16_WAT = `
(module
  (import "env" "mem" (memory 1 65536 shared))
  (func (export "lut16") (param $src i32) (param $n i32) (param $dst i32)
    (local $p i32) (local $d i32) (local $end i32) (local $x i64) (local $lo i32) (local $hi i32)
    (local.set $p (local.get $src))
    (local.set $d (local.get $dst))
    (local.set $end (i32.add (local.get $dst) (i32.and (local.get $n) (i32.const -64))))
    (block $done (loop $l
      (br_if $done (i32.ge_u (local.get $d) (local.get $end)))
      ${Array.from({ length: 16 }, (_, j) => `(local.set $x (i64.load offset=${8 * j} (local.get $p)))
      (local.set $lo (i32.wrap_i64 (local.get $x)))
      (local.set $hi (i32.wrap_i64 (i64.shr_u (local.get $x) (i64.const 32))))
      ${LOOKUP(4 * j, '(i32.and (local.get $lo) (i32.const 0xffff))')}
      ${LOOKUP(4 * j + 1, '(i32.shr_u (local.get $lo) (i32.const 16))')}
      ${LOOKUP(4 * j + 2, '(i32.and (local.get $hi) (i32.const 0xffff))')}
      ${LOOKUP(4 * j + 3, '(i32.shr_u (local.get $hi) (i32.const 16))')}`).join('\n      ')}
      (local.set $p (i32.add (local.get $p) (i32.const 128)))
      (local.set $d (i32.add (local.get $d) (i32.const 64)))
      (br $l)))
    (local.set $end (i32.add (local.get $dst) (local.get $n)))
    (block $done2 (loop $t
      (br_if $done2 (i32.ge_u (local.get $d) (local.get $end)))
      (i32.store8 (local.get $d) (i32.load8_u offset=${LUT_ADDRESS_STAND_IN} (i32.load16_u (local.get $p))))
      (local.set $p (i32.add (local.get $p) (i32.const 2)))
      (local.set $d (i32.add (local.get $d) (i32.const 1)))
      (br $t)))))
`;
