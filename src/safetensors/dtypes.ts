/** Safetensors dtypes and their element sizes in bytes. */
export const DTYPE_SIZES = {
  BOOL: 1,
  U8: 1,
  I8: 1,
  F8_E4M3: 1,
  F8_E5M2: 1,
  I16: 2,
  U16: 2,
  F16: 2,
  BF16: 2,
  I32: 4,
  U32: 4,
  F32: 4,
  F64: 8,
  I64: 8,
  U64: 8,
} as const;

export type DType = keyof typeof DTYPE_SIZES;

export function isDType(s: unknown): s is DType {
  return typeof s === 'string' && Object.prototype.hasOwnProperty.call(DTYPE_SIZES, s);
}

export function dtypeSize(d: DType): number {
  return DTYPE_SIZES[d];
}

/** Float dtypes a model's weights can be stored in (and that rxquant can read as f32). */
export type FloatDType = 'F32' | 'BF16' | 'F16';
export function isFloatWeightDType(d: DType): d is FloatDType {
  return d === 'F32' || d === 'BF16' || d === 'F16';
}

export function numelOf(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}
