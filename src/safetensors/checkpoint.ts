import { readFile, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { CheckpointError, SafetensorsFormatError } from '../errors.js';
import { SafetensorsFile, TensorRef } from './file.js';

export const INDEX_FILE = 'model.safetensors.index.json';
export const SINGLE_FILE = 'model.safetensors';

/** A checkpoint: one safetensors file or an index plus shards, with every tensor as a lazy reference. */
export interface Checkpoint {
  /** Folder of the checkpoint (the file's folder for a single file). */
  dir: string;
  files: SafetensorsFile[];
  /** All tensors by name, in file order. */
  tensors: Map<string, TensorRef>;
  /** Shard file each tensor came from (as named in the index, or the single file's name). */
  weightMap: Map<string, string>;
  close(): Promise<void>;
}

/**
 * Opens `model.safetensors`, `model.safetensors.index.json` + shards, or a single `.safetensors` file.
 * Reads headers only. Every index entry must exist in the shard it names, with no duplicates.
 */
export async function openCheckpoint(path: string): Promise<Checkpoint> {
  const abs = resolve(path);
  let st;
  try {
    st = await stat(abs);
  } catch {
    throw new CheckpointError(path, 'no such file or folder');
  }
  if (st.isFile()) {
    const f = await SafetensorsFile.open(abs);
    return makeCheckpoint(join(abs, '..'), [f], new Map([...f.tensors.keys()].map((k) => [k, f.name])));
  }
  const indexPath = join(abs, INDEX_FILE);
  if (await exists(indexPath)) return openSharded(abs, indexPath);
  const single = join(abs, SINGLE_FILE);
  if (await exists(single)) {
    const f = await SafetensorsFile.open(single);
    return makeCheckpoint(abs, [f], new Map([...f.tensors.keys()].map((k) => [k, SINGLE_FILE])));
  }
  throw new CheckpointError(path, `no ${SINGLE_FILE} or ${INDEX_FILE} in this folder`);
}

async function openSharded(dir: string, indexPath: string): Promise<Checkpoint> {
  let index: unknown;
  try {
    index = JSON.parse(await readFile(indexPath, 'utf8'));
  } catch (e) {
    throw new CheckpointError(indexPath, `not valid JSON (${(e as Error).message})`);
  }
  const wm = (index as { weight_map?: unknown } | null)?.weight_map;
  if (wm === null || typeof wm !== 'object' || Array.isArray(wm)) {
    throw new CheckpointError(indexPath, '"weight_map" is missing or not an object');
  }
  const weightMap = new Map<string, string>();
  const shardNames = new Set<string>();
  for (const [name, shard] of Object.entries(wm as Record<string, unknown>)) {
    if (typeof shard !== 'string' || shard.includes('/') || shard.includes('\\') || shard === '..' || shard === '.' || shard === '') {
      throw new CheckpointError(indexPath, `weight_map entry "${name}" names an invalid shard ${JSON.stringify(shard)}`);
    }
    weightMap.set(name, shard);
    shardNames.add(shard);
  }
  const files: SafetensorsFile[] = [];
  try {
    for (const shard of [...shardNames].sort()) {
      const p = join(dir, shard);
      if (!(await exists(p))) throw new CheckpointError(indexPath, `shard "${shard}" named in weight_map does not exist`);
      files.push(await SafetensorsFile.open(p));
    }
    const byName = new Map(files.map((f) => [f.name, f]));
    // A tensor stored in two shards is ambiguous.
    const seen = new Map<string, string>();
    for (const f of files) {
      for (const t of f.tensors.keys()) {
        const prev = seen.get(t);
        if (prev !== undefined) throw new CheckpointError(indexPath, `tensor "${t}" is stored in both ${prev} and ${f.name}`);
        seen.set(t, f.name);
      }
    }
    for (const [name, shard] of weightMap) {
      if (!byName.get(shard)!.tensors.has(name)) {
        throw new SafetensorsFormatError(join(dir, shard), `listed in ${INDEX_FILE} but not present in this shard`, name);
      }
    }
    return makeCheckpoint(dir, files, weightMap);
  } catch (e) {
    await Promise.all(files.map((f) => f.close()));
    throw e;
  }
}

function makeCheckpoint(dir: string, files: SafetensorsFile[], weightMap: Map<string, string>): Checkpoint {
  const tensors = new Map<string, TensorRef>();
  const byName = new Map(files.map((f) => [f.name, f]));
  for (const [name, shard] of weightMap) tensors.set(name, byName.get(shard)!.tensor(name));
  return {
    dir,
    files,
    tensors,
    weightMap,
    close: async () => {
      await Promise.all(files.map((f) => f.close()));
    },
  };
}

export async function exists(p: string): Promise<boolean> {
  try {
    await stat(p);
    return true;
  } catch {
    return false;
  }
}
