/** E8M0 scales of the MX formats (spec §5.4): a biased power of two, byte = e + 127. */
export function e8m0ToF32(byte: number): number {
  return 2 ** (byte - 127);
}

/** MXFP8 block scale: e = ceil(log2(amax / 448)) clamped to [-127, 127], -127 for amax 0. */
export function e8m0ForMxfp8(amax: number): number {
  if (amax === 0) return 0;
  const e = Math.ceil(Math.log2(Math.fround(amax / 448)));
  return Math.min(127, Math.max(-127, e)) + 127;
}

/** MXFP4 block scale: e = ceil(max(log2(amax / 6), -127)). */
export function e8m0ForMxfp4(amax: number): number {
  const e = Math.ceil(Math.max(Math.log2(Math.fround(amax / 6)), -127));
  return e + 127;
}
