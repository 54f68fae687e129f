import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import { SafetensorsFile } from '../src/safetensors/file.js';

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
export const SHARED = join(ROOT, '..', 'shared');
export const DATA = join(SHARED, 'data');
export const REF = join(DATA, 'reference');
export const STORIES = join(DATA, 'stories260K', 'hf');
export const DENSE_MODELS = ['llama31', 'qwen2', 'qwen3', 'mistral'] as const;
export const synthetic = (arch: string) => join(REF, 'synthetic', arch);

/** Reads every tensor of a safetensors file as raw bytes (small files only). */
export async function readAll(path: string): Promise<Map<string, { dtype: string; shape: readonly number[]; bytes: Uint8Array }>> {
  const f = await SafetensorsFile.open(path);
  try {
    const out = new Map<string, { dtype: string; shape: readonly number[]; bytes: Uint8Array }>();
    for (const t of f.tensors.values()) out.set(t.name, { dtype: t.dtype, shape: t.shape, bytes: await t.read() });
    return out;
  } finally {
    await f.close();
  }
}

export function u16(b: Uint8Array): Uint16Array {
  const c = b.slice();
  return new Uint16Array(c.buffer, 0, c.length / 2);
}
export function f32(b: Uint8Array): Float32Array {
  const c = b.slice();
  return new Float32Array(c.buffer, 0, c.length / 4);
}
export function hex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join(' ');
}
