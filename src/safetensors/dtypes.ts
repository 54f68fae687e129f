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

/**
 * The safetensors crate's `Dtype` enum in declaration order (increasing alignment). Its writer lays
 * a file's tensors out by this rank, highest first, then by name: so F8_E4M3 scales come before U8
 * packed weights although both are one byte, and BF16 before F16.
 */
const SAFETENSORS_RANK: Record<DType, number> = {
  BOOL: 0, U8: 1, I8: 2, F8_E5M2: 3, F8_E4M3: 4, I16: 5, U16: 6, F16: 7, BF16: 8, I32: 9, U32: 10, F32: 11, F64: 12, I64: 13, U64: 14,
};

/** Orders tensors as the safetensors writer lays them out in a file: dtype rank descending, then name (bytewise). */
export function safetensorsLayoutOrder(a: { name: string; dtype: DType }, b: { name: string; dtype: DType }): number {
  return SAFETENSORS_RANK[b.dtype] - SAFETENSORS_RANK[a.dtype] || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0);
}

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

/**
 * Product of a shape's extents times an element size, refusing (RangeError) any dimension that is not
 * a non-negative safe integer and any product past 2^53, where doubles stop counting exactly (the
 * safetensors crate's checked_mul). Zero-sized dimensions give 0.
 */
export function checkedProduct(shape: readonly number[], elementSize = 1): number {
  let n = elementSize;
  for (const d of shape) {
    if (!Number.isSafeInteger(d) || d < 0) throw new RangeError(`dimension ${d} is not a non-negative integer`);
    n *= d;
    if (!Number.isSafeInteger(n)) throw new RangeError(`[${shape.join(', ')}] x ${elementSize} bytes is past 2^53`);
  }
  return n;
}

export function numelOf(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}
