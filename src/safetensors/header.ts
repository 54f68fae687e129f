import { SafetensorsFormatError } from '../errors.js';
import { checkedProduct, dtypeSize, isDType, type DType } from './dtypes.js';

/** One tensor entry of a safetensors header, validated. Offsets are relative to the data section. */
export interface TensorInfo {
  name: string;
  dtype: DType;
  shape: number[];
  /** [begin, end) relative to the start of the data section (8 + headerLength). */
  dataOffsets: [number, number];
}

export interface ParsedHeader {
  headerLength: number;
  /** Absolute file offset of the data section. */
  dataStart: number;
  metadata: Record<string, string> | undefined;
  /** Tensors in file order (sorted by begin offset). */
  tensors: TensorInfo[];
}

/** Largest header we accept (the safetensors crate uses 100 MB as well). */
export const MAX_HEADER_LENGTH = 100_000_000;

/**
 * Reads the 8-byte little-endian header length. Rejects 0 and anything past the end of the file.
 */
export function parseHeaderLength(prefix: Uint8Array, fileSize: number, file: string): number {
  if (fileSize < 8 || prefix.length < 8) {
    throw new SafetensorsFormatError(file, `file is ${fileSize} bytes, too short for a safetensors header`);
  }
  const view = new DataView(prefix.buffer, prefix.byteOffset, 8);
  const n = view.getBigUint64(0, true);
  if (n === 0n) throw new SafetensorsFormatError(file, 'header length is 0');
  if (n > BigInt(fileSize - 8)) {
    throw new SafetensorsFormatError(file, `header length ${n} goes past the end of the file (${fileSize} bytes)`);
  }
  if (n > BigInt(MAX_HEADER_LENGTH)) {
    throw new SafetensorsFormatError(file, `header length ${n} exceeds the ${MAX_HEADER_LENGTH}-byte limit`);
  }
  return Number(n);
}

/**
 * Parses and validates the JSON header, in the spirit of the safetensors crate: every
 * inconsistency is rejected before any tensor data is touched.
 *
 * @param json the header bytes (exactly headerLength bytes)
 * @param fileSize total size of the file, used to check that the data section is covered exactly
 */
export function parseHeader(json: Uint8Array, headerLength: number, fileSize: number, file: string): ParsedHeader {
  let parsed: unknown;
  try {
    parsed = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(json));
  } catch (e) {
    throw new SafetensorsFormatError(file, `header is not valid UTF-8 JSON (${(e as Error).message})`);
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
    throw new SafetensorsFormatError(file, 'header is not a JSON object');
  }
  const dataStart = 8 + headerLength;
  const dataLength = fileSize - dataStart;
  let metadata: Record<string, string> | undefined;
  const tensors: TensorInfo[] = [];
  for (const [name, value] of Object.entries(parsed as Record<string, unknown>)) {
    if (name === '__metadata__') {
      metadata = parseMetadata(value, file);
      continue;
    }
    tensors.push(parseEntry(name, value, file));
  }
  tensors.sort((a, b) => a.dataOffsets[0] - b.dataOffsets[0] || a.dataOffsets[1] - b.dataOffsets[1]);
  // Contiguous, non-overlapping, hole-free coverage of [0, dataLength).
  let expected = 0;
  for (const t of tensors) {
    const [begin, end] = t.dataOffsets;
    if (begin < expected) {
      throw new SafetensorsFormatError(file, `data_offsets [${begin}, ${end}] overlap the previous tensor (which ends at ${expected})`, t.name);
    }
    if (begin > expected) {
      throw new SafetensorsFormatError(file, `data_offsets [${begin}, ${end}] leave a hole: bytes ${expected}..${begin} belong to no tensor`, t.name);
    }
    if (end > dataLength) {
      throw new SafetensorsFormatError(file, `data_offsets [${begin}, ${end}] go past the end of the file (data section is ${dataLength} bytes; file truncated?)`, t.name);
    }
    expected = end;
  }
  if (expected !== dataLength) {
    if (expected > dataLength) {
      throw new SafetensorsFormatError(file, `tensors need ${expected} data bytes but the file holds ${dataLength} (file truncated?)`);
    }
    throw new SafetensorsFormatError(file, `${dataLength - expected} trailing bytes after the last tensor belong to no tensor`);
  }
  return { headerLength, dataStart, metadata, tensors };
}

function parseMetadata(value: unknown, file: string): Record<string, string> {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new SafetensorsFormatError(file, '__metadata__ is not an object of strings');
  }
  for (const [k, v] of Object.entries(value)) {
    if (typeof v !== 'string') throw new SafetensorsFormatError(file, `__metadata__ value for "${k}" is not a string`);
  }
  return value as Record<string, string>;
}

function parseEntry(name: string, value: unknown, file: string): TensorInfo {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new SafetensorsFormatError(file, 'entry is not an object', name);
  }
  const v = value as Record<string, unknown>;
  for (const key of Object.keys(v)) {
    if (key !== 'dtype' && key !== 'shape' && key !== 'data_offsets') {
      throw new SafetensorsFormatError(file, `unknown field "${key}"`, name);
    }
  }
  if (!isDType(v.dtype)) {
    throw new SafetensorsFormatError(file, `unknown dtype ${JSON.stringify(v.dtype)}`, name);
  }
  if (!Array.isArray(v.shape)) throw new SafetensorsFormatError(file, 'shape is not an array', name);
  for (const d of v.shape) {
    if (typeof d !== 'number' || !Number.isSafeInteger(d) || d < 0) {
      throw new SafetensorsFormatError(file, `shape ${JSON.stringify(v.shape)} has a negative or non-integer dimension`, name);
    }
  }
  const off = v.data_offsets;
  if (!Array.isArray(off) || off.length !== 2 || !off.every((x) => typeof x === 'number' && Number.isSafeInteger(x) && x >= 0)) {
    throw new SafetensorsFormatError(file, `data_offsets ${JSON.stringify(off)} is not a pair of non-negative integers`, name);
  }
  const [begin, end] = off as [number, number];
  if (end < begin) throw new SafetensorsFormatError(file, `data_offsets [${begin}, ${end}] end before they begin`, name);
  const shape = v.shape as number[];
  let expectedBytes: number;
  try {
    expectedBytes = checkedProduct(shape, dtypeSize(v.dtype));
  } catch {
    throw new SafetensorsFormatError(file, `${v.dtype} ${JSON.stringify(shape)} needs more than 2^53 bytes`, name);
  }
  if (end - begin !== expectedBytes) {
    throw new SafetensorsFormatError(
      file,
      `data_offsets span ${end - begin} bytes but ${v.dtype} ${JSON.stringify(shape)} needs ${expectedBytes}`,
      name,
    );
  }
  return { name, dtype: v.dtype, shape, dataOffsets: [begin, end] };
}
