/**
 * WebAssembly SIMD kernels over bf16 weights, hand-written (node-performance §2: 4-20x plain JS).
 * Every function reads and writes a shared memory at byte addresses the caller gives; bytes 0..1023
 * hold the e4m3 decode table (256 f32). Each kernel is tested byte-for-byte against the plain
 * JavaScript reference of its format (test/wasm.test.ts).
 *
 * Helpers are written as WAT text macros and inlined by hand, since Node 20 does not inline
 * wasm-to-wasm calls.
 */

/** bf16 lanes of a v128 at `addr` -> four f32x4 (low 4 of the first 8, high 4, ...). */
const BF16_TO_F32_LO = (v: string) => `(i32x4.shl (i32x4.extend_low_i16x8_u ${v}) (i32.const 16))`;
const BF16_TO_F32_HI = (v: string) => `(i32x4.shl (i32x4.extend_high_i16x8_u ${v}) (i32.const 16))`;

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
  $k6: 'f32x4 6 6 6 6',
  $kF1: 'f32x4 1 1 1 1',
  $kM4: 'f32x4 4194304 4194304 4194304 4194304',
  $kB4: 'i32x4 0xc11fffff 0xc11fffff 0xc11fffff 0xc11fffff',
  $k8: 'i32x4 8 8 8 8',
  $kRnd: 'f32x4 12582912 12582912 12582912 12582912',
  $kRndb: 'i32x4 0x4b400000 0x4b400000 0x4b400000 0x4b400000',
  $kLo4: 'i32x4 -8 -8 -8 -8',
  $kHi4: 'i32x4 7 7 7 7',
  $k7fff: 'i32x4 0x7fff7fff 0x7fff7fff 0x7fff7fff 0x7fff7fff',
  $kHi: 'i32x4 0xffff0000 0xffff0000 0xffff0000 0xffff0000',
  $kFF: 'i32x4 0x00ff00ff 0x00ff00ff 0x00ff00ff 0x00ff00ff',
  $k8000: 'i32x4 0x80008000 0x80008000 0x80008000 0x80008000',
  $k08: 'i32x4 0x08080808 0x08080808 0x08080808 0x08080808',
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
const E4M3_CONSTS = ['$kAbs', '$k80', '$k448', '$kMin8', '$kM8', '$kB8', '$kOne'];
const E2M1_CONSTS = ['$kAbs', '$k6', '$kF1', '$kM4', '$kB4', '$kOne', '$k8'];

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

/**
 * e2m1 code of each f32 lane of q with NVFP4's rounding: round-to-nearest-even to one mantissa bit
 * (ties 0.75, 1.75, 3.5 go up, 1.25, 2.5, 5 down), subnormal 0.5, saturate at 6; sign = (q < 0), so
 * -0.0 gives 0. As E4M3: mantissa rounding by integer add for |q| >= 1 (rebias -(127-1) << 1 = -252
 * folded into $kB4), |q| + 2^22 (ulp 0.5) below 1; the larger of the two, as in E4M3. Uses
 * locals $qq, $qa.
 */
const E2M1B = (q: string) => `
  (v128.or
    (i32x4.max_s
      (i32x4.sub (f32x4.add
        (f32x4.pmin (local.tee $qa (f32x4.pmin (v128.and (local.tee $qq ${q}) (local.get $kAbs)) (local.get $k6))) (local.get $kF1))
        (local.get $kM4)) (local.get $kM4))
      (i32x4.shr_s
        (i32x4.add (i32x4.add (local.get $qa) (local.get $kB4))
          (v128.and (i32x4.shr_u (local.get $qa) (i32.const 22)) (local.get $kOne)))
        (i32.const 22)))
    (v128.and (f32x4.lt (local.get $qq) (v128.const f32x4 0 0 0 0)) (local.get $k8)))`;

/**
 * E2M1B without the sign, for q >= 0 (a quotient of |x|): the magnitude code 0..7. Uses local $qa.
 */
const E2M1_MAG = (q: string) => `
  (i32x4.max_s
    (i32x4.sub (f32x4.add
      (f32x4.pmin (local.tee $qa (f32x4.pmin ${q} (local.get $k6))) (local.get $kF1))
      (local.get $kM4)) (local.get $kM4))
    (i32x4.shr_s
      (i32x4.add (i32x4.add (local.get $qa) (local.get $kB4))
        (v128.and (i32x4.shr_u (local.get $qa) (i32.const 22)) (local.get $kOne)))
      (i32.const 22)))`;

/** Four i32x4 of byte values -> one v128 of 16 bytes. */
const NARROW_U8 = (a: string, b: string, c: string, d: string) =>
  `(i8x16.narrow_i16x8_u (i16x8.narrow_i32x4_u ${a} ${b}) (i16x8.narrow_i32x4_u ${c} ${d}))`;
const NARROW_S8 = (a: string, b: string, c: string, d: string) =>
  `(i8x16.narrow_i16x8_s (i16x8.narrow_i32x4_s ${a} ${b}) (i16x8.narrow_i32x4_s ${c} ${d}))`;

/** Horizontal max of the four f32 lanes of v. */
const HMAX = (v: string) => `
  (f32.max (f32.max (f32x4.extract_lane 0 ${v}) (f32x4.extract_lane 1 ${v}))
           (f32.max (f32x4.extract_lane 2 ${v}) (f32x4.extract_lane 3 ${v})))`;

/** |bf16| bits max of 8 lanes at addr (integer compare is monotonic for finite values). */
const ABS16 = (addr: string) => `(v128.and (v128.load ${addr}) (v128.const i16x8 0x7fff 0x7fff 0x7fff 0x7fff 0x7fff 0x7fff 0x7fff 0x7fff))`;
const HMAX16 = (v: string) => `
  (local.set $m (i16x8.extract_lane_u 0 ${v}))
  ${[1, 2, 3, 4, 5, 6, 7].map((i) => `(if (i32.gt_u (i16x8.extract_lane_u ${i} ${v}) (local.get $m)) (then (local.set $m (i16x8.extract_lane_u ${i} ${v}))))`).join('\n  ')}`;

/** Loads one block of 16 bf16 at $p + off as four f32x4 locals $X0..$X3. */
const LOAD_BLOCK = (x: string, off: number) => `
  (local.set $v (v128.load offset=${off} (local.get $p)))
  (local.set $${x}0 ${BF16_TO_F32_LO('(local.get $v)')})
  (local.set $${x}1 ${BF16_TO_F32_HI('(local.get $v)')})
  (local.set $v (v128.load offset=${off + 16} (local.get $p)))
  (local.set $${x}2 ${BF16_TO_F32_LO('(local.get $v)')})
  (local.set $${x}3 ${BF16_TO_F32_HI('(local.get $v)')})`;

/** Lane-wise max of |X0..X3|. */
const BMAX = (x: string) =>
  `(f32x4.pmax (f32x4.pmax (f32x4.abs (local.get $${x}0)) (f32x4.abs (local.get $${x}1))) (f32x4.pmax (f32x4.abs (local.get $${x}2)) (f32x4.abs (local.get $${x}3))))`;

/** Codes of block X (lane `lane` of $div is its divisor) stored at $o + off. */
const QBLOCK = (x: string, lane: number, off: number) => `
  (local.set $dv (f32x4.splat (f32x4.extract_lane ${lane} (local.get $div))))
  (v128.store offset=${off} (local.get $o)
    ${NARROW_U8(E2M1B(`(f32x4.div (local.get $${x}0) (local.get $dv))`), E2M1B(`(f32x4.div (local.get $${x}1) (local.get $dv))`), E2M1B(`(f32x4.div (local.get $${x}2) (local.get $dv))`), E2M1B(`(f32x4.div (local.get $${x}3) (local.get $dv))`))})`;

const C_NV = CONSTS(...E2M1_CONSTS);
const C_NV4 = CONSTS(...new Set([...E2M1_CONSTS, ...E4M3_CONSTS, '$k7fff', '$kHi', '$kFF', '$k8000', '$k08']));
const C_E4 = CONSTS(...E4M3_CONSTS);
const C_I4 = CONSTS('$kRnd', '$kRndb', '$kLo4', '$kHi4', '$k7fff');

/** u16 lanes whose max is the max |bits| of the block of 16 bf16 at $p + off. */
const BLOCK_MAX16 = (m: string, off: number, base = '$p') =>
  `(local.set ${m} (i16x8.max_u (v128.and (v128.load offset=${off} (local.get ${base})) (local.get $k7fff)) (v128.and (v128.load offset=${off + 16} (local.get ${base})) (local.get $k7fff))))`;

/**
 * Codes of block b (lane b of $div is its divisor) from $p + 32b to $o + 16b, in element order, and
 * packed two per byte (even element in the low nibble) to $pk + 8b unless $packed is 0. The
 * magnitudes come from |x| / divisor; the sign bit from the bf16 sign of x, set for every x below
 * -0.0 (0x8000 itself gives 0, as -0.0 / d does): the quotient of a nonzero x is never zero here
 * (the caller keeps divisors <= 2^16, so |x| >= 2^-133 gives |q| >= 2^-149), so its sign is x's.
 */
const QBLOCK_EO = (b: number) => `
  (local.set $dv (f32x4.splat (f32x4.extract_lane ${b} (local.get $div))))
  (local.set $v (v128.load offset=${32 * b} (local.get $p)))
  (local.set $w (v128.load offset=${32 * b + 16} (local.get $p)))
  (local.set $x (v128.and (local.get $v) (local.get $k7fff)))
  (local.set $y (v128.and (local.get $w) (local.get $k7fff)))
  (local.set $u
    (v128.or
      (i16x8.narrow_i32x4_u
        (v128.or ${E2M1_MAG('(f32x4.div (i32x4.shl (local.get $x) (i32.const 16)) (local.get $dv))')}
          (i32x4.shl ${E2M1_MAG('(f32x4.div (v128.and (local.get $x) (local.get $kHi)) (local.get $dv))')} (i32.const 8)))
        (v128.or ${E2M1_MAG('(f32x4.div (i32x4.shl (local.get $y) (i32.const 16)) (local.get $dv))')}
          (i32x4.shl ${E2M1_MAG('(f32x4.div (v128.and (local.get $y) (local.get $kHi)) (local.get $dv))')} (i32.const 8))))
      (v128.and (i8x16.narrow_i16x8_s (i16x8.gt_u (local.get $v) (local.get $k8000)) (i16x8.gt_u (local.get $w) (local.get $k8000))) (local.get $k08))))
  (v128.store offset=${16 * b} (local.get $o) (local.get $u))
  ;; u16 lane = even | odd << 8 -> byte even | odd << 4
  (if (local.get $packed) (then
    (v128.store64_lane offset=${8 * b} 0 (local.get $pk)
      (i8x16.narrow_i16x8_u
        (v128.and (v128.or (local.get $u) (i16x8.shr_u (local.get $u) (i32.const 4))) (local.get $kFF))
        (local.get $u)))))`;

/**
 * The divisors (e4m3 scale x ws2) of the 4 blocks of group g at $q, to $nd, and their e4m3 codes to
 * scales[4g..4g+3]. nvfp4x4 computes them one group ahead (see there).
 */
const GROUP_SCALES = (g: string) => `
      ${BLOCK_MAX16('$m0', 0, '$q')}
      ${BLOCK_MAX16('$m1', 32, '$q')}
      ${BLOCK_MAX16('$m2', 64, '$q')}
      ${BLOCK_MAX16('$m3', 96, '$q')}
      ;; u16 lanes 0-3: block 0 (or 2), 4-7: block 1 (or 3)
      (local.set $x (i16x8.max_u (i8x16.shuffle 0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23 (local.get $m0) (local.get $m1))
                                 (i8x16.shuffle 8 9 10 11 12 13 14 15 24 25 26 27 28 29 30 31 (local.get $m0) (local.get $m1))))
      (local.set $y (i16x8.max_u (i8x16.shuffle 0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23 (local.get $m2) (local.get $m3))
                                 (i8x16.shuffle 8 9 10 11 12 13 14 15 24 25 26 27 28 29 30 31 (local.get $m2) (local.get $m3))))
      ;; two u16 per 32-bit lane, lane b = block b; then the max of the pair, as f32 bits
      (local.set $s (i16x8.max_u (i8x16.shuffle 0 1 2 3 8 9 10 11 16 17 18 19 24 25 26 27 (local.get $x) (local.get $y))
                                 (i8x16.shuffle 4 5 6 7 12 13 14 15 20 21 22 23 28 29 30 31 (local.get $x) (local.get $y))))
      (local.set $s (i32x4.shl (i16x8.max_u (local.get $s) (i32x4.shr_u (local.get $s) (i32.const 16))) (i32.const 16)))
      ;; s = clamp(blockAmax / (6 ws2), 2^-9, 448), zero -> 1
      (local.set $s (f32x4.div (local.get $s) (f32x4.splat (local.get $six))))
      (local.set $s (v128.bitselect (v128.const f32x4 1 1 1 1) (local.get $s) (f32x4.eq (local.get $s) (v128.const f32x4 0 0 0 0))))
      (local.set $s (f32x4.pmin (f32x4.pmax (local.get $s) (v128.const f32x4 0x1p-9 0x1p-9 0x1p-9 0x1p-9)) (local.get $k448)))
      (local.set $code ${E4M3('(local.get $s)')})
      (v128.store32_lane 0 (i32.add (local.get $scales) (i32.shl ${g} (i32.const 2)))
        (i8x16.narrow_i16x8_u (i16x8.narrow_i32x4_u (local.get $code) (local.get $code)) (i16x8.narrow_i32x4_u (local.get $code) (local.get $code))))
      ;; the e4m3 value of each scale (exact), times ws2
      (local.set $nd (f32x4.mul (f32x4.splat (local.get $ws2))
        (v128.bitselect
          (f32x4.mul (f32x4.nearest (f32x4.mul (local.get $s) (v128.const f32x4 512 512 512 512))) (v128.const f32x4 0x1p-9 0x1p-9 0x1p-9 0x1p-9))
          (v128.and
            (i32x4.add (local.get $s)
              (i32x4.add (v128.const i32x4 0x7ffff 0x7ffff 0x7ffff 0x7ffff)
                (v128.and (i32x4.shr_u (local.get $s) (i32.const 20)) (local.get $kOne))))
            (v128.const i32x4 0xfff00000 0xfff00000 0xfff00000 0xfff00000))
          (f32x4.lt (local.get $s) (local.get $kMin8)))))
`;

export const KERNELS_WAT = `
(module
  (import "env" "mem" (memory 1 65536 shared))

  ;; max over n bf16 values of (bits & 0x7fff); > 0x7f80 means a NaN, 0x7f80 an infinity
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

  ;; NVFP4 over nblk blocks of 16 bf16: e4m3 block scale (vs ws2) to scales[b], 16 e2m1 codes to codes
  (func (export "nvfp4") (param $src i32) (param $nblk i32) (param $ws2 f32) (param $six f32) (param $codes i32) (param $scales i32)
    (local $b i32) (local $p i32) (local $lo v128) (local $hi v128)
    (local $f0 v128) (local $f1 v128) (local $f2 v128) (local $f3 v128) (local $mx v128) (local $a v128)
    (local $s f32) (local $bits i32) (local $code i32) (local $dv v128) (local $qq v128) (local $qa v128) ${C_NV.locals}
    ${C_NV.init}
    (block $done (loop $l
      (br_if $done (i32.ge_u (local.get $b) (local.get $nblk)))
      (local.set $p (i32.add (local.get $src) (i32.shl (local.get $b) (i32.const 5))))
      (local.set $lo (v128.load (local.get $p)))
      (local.set $hi (v128.load offset=16 (local.get $p)))
      (local.set $f0 ${BF16_TO_F32_LO('(local.get $lo)')})
      (local.set $f1 ${BF16_TO_F32_HI('(local.get $lo)')})
      (local.set $f2 ${BF16_TO_F32_LO('(local.get $hi)')})
      (local.set $f3 ${BF16_TO_F32_HI('(local.get $hi)')})
      (local.set $mx (f32x4.pmax (f32x4.pmax (f32x4.abs (local.get $f0)) (f32x4.abs (local.get $f1)))
                                (f32x4.pmax (f32x4.abs (local.get $f2)) (f32x4.abs (local.get $f3)))))
      ;; s = clamp(blockAmax / (6 ws2), 2^-9, 448), zero block -> 1
      (local.set $s (f32.div ${HMAX('(local.get $mx)')} (local.get $six)))
      (if (f32.eq (local.get $s) (f32.const 0)) (then (local.set $s (f32.const 1))))
      (local.set $s (f32.min (f32.max (local.get $s) (f32.const 0x1p-9)) (f32.const 448)))
      ;; scalar e4m3 of a positive value
      (if (f32.lt (local.get $s) (f32.const 0.015625))
        (then (local.set $code (i32.trunc_f32_u (f32.nearest (f32.mul (local.get $s) (f32.const 512))))))
        (else
          (local.set $bits (i32.reinterpret_f32 (local.get $s)))
          (local.set $code (i32.sub (i32.shr_u (i32.add (local.get $bits)
             (i32.add (i32.const 0x7ffff) (i32.and (i32.shr_u (local.get $bits) (i32.const 20)) (i32.const 1)))) (i32.const 20)) (i32.const 960)))))
      (i32.store8 (i32.add (local.get $scales) (local.get $b)) (local.get $code))
      (local.set $dv (f32x4.splat (f32.mul (f32.load (i32.shl (local.get $code) (i32.const 2))) (local.get $ws2))))
      (v128.store (i32.add (local.get $codes) (i32.shl (local.get $b) (i32.const 4)))
        ${NARROW_U8(E2M1B('(f32x4.div (local.get $f0) (local.get $dv))'), E2M1B('(f32x4.div (local.get $f1) (local.get $dv))'), E2M1B('(f32x4.div (local.get $f2) (local.get $dv))'), E2M1B('(f32x4.div (local.get $f3) (local.get $dv))'))})
      (local.set $b (i32.add (local.get $b) (i32.const 1)))
      (br $l))))

  ;; NVFP4, four blocks of 16 per iteration, in two sweeps so few vectors are live at once (V8 has
  ;; 16 SIMD registers): (1) the four block maxima on |bf16 bits|, reduced to one f32 lane per block,
  ;; and the four scales as one vector; (2) each block reloaded (L1) and quantized. Weights are split
  ;; into even and odd elements (bits << 16 and bits & 0xffff0000 are their f32 values, one
  ;; instruction each), and the codes re-interleaved as (even | odd << 8) when narrowing.
  (func (export "nvfp4x4") (param $src i32) (param $n4 i32) (param $ws2 f32) (param $six f32) (param $codes i32) (param $scales i32) (param $packed i32)
    (local $g i32) (local $p i32) (local $o i32) (local $pk i32) (local $u v128) (local $v v128) (local $w v128)
    (local $m0 v128) (local $m1 v128) (local $m2 v128) (local $m3 v128)
    (local $x v128) (local $y v128) (local $s v128) (local $a v128) (local $qq v128) (local $qa v128) (local $code v128) (local $div v128) (local $dv v128)
    (local $q i32) (local $nd v128)
    ${C_NV4.locals}
    ${C_NV4.init}
    (if (local.get $n4) (then
      (local.set $q (local.get $src))
      ${GROUP_SCALES('(i32.const 0)')}))
    (block $done (loop $l
      (br_if $done (i32.ge_u (local.get $g) (local.get $n4)))
      (local.set $p (i32.add (local.get $src) (i32.shl (local.get $g) (i32.const 7))))
      ;; this group's divisors were computed last iteration; the next group's now, so that their
      ;; long dependency chain (max, e4m3 scale, its value) overlaps this group's codes instead of
      ;; stalling the start of every iteration (the loop body is larger than the reorder window)
      (local.set $div (local.get $nd))
      (if (i32.lt_u (i32.add (local.get $g) (i32.const 1)) (local.get $n4)) (then
        (local.set $q (i32.add (local.get $p) (i32.const 128)))
        ${GROUP_SCALES('(i32.add (local.get $g) (i32.const 1))')}))
      (local.set $o (i32.add (local.get $codes) (i32.shl (local.get $g) (i32.const 6))))
      (local.set $pk (i32.add (local.get $packed) (i32.shl (local.get $g) (i32.const 5))))
      ${QBLOCK_EO(0)}
      ${QBLOCK_EO(1)}
      ${QBLOCK_EO(2)}
      ${QBLOCK_EO(3)}
      (local.set $g (i32.add (local.get $g) (i32.const 1)))
      (br $l))))

  ;; INT4 over groups of 128 bf16 (K % 128 == 0): scale = amax/7 (zero -> 1) as f32, q = rne(w/scale) in [-8, 7]
  (func (export "int4") (param $src i32) (param $ngroups i32) (param $codes i32) (param $scales i32)
    (local $g i32) (local $p i32) (local $j i32) (local $v v128) (local $mx v128) (local $s f32) (local $sv v128) (local $q i32) ${C_I4.locals}
    ${C_I4.init}
    (block $done (loop $l
      (br_if $done (i32.ge_u (local.get $g) (local.get $ngroups)))
      (local.set $p (i32.add (local.get $src) (i32.shl (local.get $g) (i32.const 8))))
      ;; max |w| of the group on the bf16 bits: a tree over its 16 vectors, not a chain through one
      ;; accumulator
      (local.set $mx ${I4_AMAX_TREE(0, 16)})
      ;; horizontal max of the 8 u16 lanes, then the bf16 bits as f32
      (local.set $mx (i16x8.max_u (local.get $mx) (i8x16.shuffle 8 9 10 11 12 13 14 15 0 1 2 3 4 5 6 7 (local.get $mx) (local.get $mx))))
      (local.set $mx (i16x8.max_u (local.get $mx) (i8x16.shuffle 4 5 6 7 0 1 2 3 4 5 6 7 0 1 2 3 (local.get $mx) (local.get $mx))))
      (local.set $mx (i16x8.max_u (local.get $mx) (i8x16.shuffle 2 3 0 1 2 3 0 1 2 3 0 1 2 3 0 1 (local.get $mx) (local.get $mx))))
      (local.set $s (f32.reinterpret_i32 (i32.shl (i16x8.extract_lane_u 0 (local.get $mx)) (i32.const 16))))
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
            Q4(BF16_TO_F32_LO('(local.get $v)')),
            Q4(BF16_TO_F32_HI('(local.get $v)')),
            Q4(BF16_TO_F32_LO('(local.get $mx)')),
            Q4(BF16_TO_F32_HI('(local.get $mx)')),
          )})
        (local.set $j (i32.add (local.get $j) (i32.const 32)))
        (br $l2)))
      (local.set $g (i32.add (local.get $g) (i32.const 1)))
      (br $l))))

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

  ;; FP8 128x128 tiles over rows [0, rows) of a bf16 [rows, K] band set (K % 128 == 0):
  ;; scales[band * BK + tile] = tileAmax/448 (zero -> 1), codes = e4m3(w / scale).
  ;; Both passes walk rows in memory order; the per-tile |bits| maxima live at the start of the
  ;; band's codes (overwritten by the codes in the second pass, after the scales are taken).
  (func (export "fp8_block") (param $src i32) (param $rows i32) (param $K i32) (param $codes i32) (param $scales i32)
    (local $band i32) (local $r0 i32) (local $nr i32) (local $tb i32) (local $BK i32) (local $r i32) (local $j i32)
    (local $p i32) (local $acc v128) (local $m i32) (local $s f32) (local $sv v128) (local $v v128) (local $w v128) (local $a v128) (local $o i32) (local $qq v128)
    (local $accs i32) (local $row i32) ${C_E4.locals}
    ${C_E4.init}
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
        (local.set $s (f32.reinterpret_i32 (i32.shl (local.get $m) (i32.const 16))))
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
                E4M3(`(f32x4.div ${BF16_TO_F32_LO('(local.get $v)')} (local.get $sv))`),
                E4M3(`(f32x4.div ${BF16_TO_F32_HI('(local.get $v)')} (local.get $sv))`),
                E4M3(`(f32x4.div ${BF16_TO_F32_LO('(local.get $w)')} (local.get $sv))`),
                E4M3(`(f32x4.div ${BF16_TO_F32_HI('(local.get $w)')} (local.get $sv))`),
              )})
            (local.set $j (i32.add (local.get $j) (i32.const 32)))
            (br $lk)))
          (local.set $tb (i32.add (local.get $tb) (i32.const 1)))
          (br $lk2)))
        (local.set $r (i32.add (local.get $r) (i32.const 1)))
        (br $lq)))
      (local.set $band (i32.add (local.get $band) (i32.const 1)))
      (br $lb))))
)
`;

/** Max of |bf16 bits| (u16 lanes; integer order is |value| order) over vectors [i, i + n) of the group at $p, as a balanced tree. */
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

/** Table lookup of the bf16 in `bits` (an i32 expression) stored as byte `off` of the codes. */
const LOOKUP = (off: number, bits: string) => `(i32.store8 offset=${off} (local.get $d) (i32.load8_u offset=${LUT_ADDRESS_STAND_IN} ${bits}))`;

/**
 * dst[i] = table[bf16 bits of src[i]] with the 64K-entry table (FP8 per-tensor: bit-exact for any
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
