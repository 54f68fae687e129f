import { mkdir, readdir, readFile, rename, rm, stat, statfs, writeFile } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { OutputError, RxquantError } from '../errors.js';
import { dtypeSize, numelOf, safetensorsLayoutOrder, type DType } from './dtypes.js';
import { INDEX_FILE, SINGLE_FILE } from './checkpoint.js';
import { formatBytes } from './size.js';
import { AlignedFile, StagingPool } from './aligned-file.js';
import { OutputLock } from './lock.js';

/** What the writer needs to know about an output tensor before any of its data exists. */
export interface TensorSpec {
  name: string;
  dtype: DType;
  shape: readonly number[];
}

export interface PlannedTensor extends TensorSpec {
  /** Offset in the shard's data section. */
  offset: number;
  byteLength: number;
}

export interface PlannedShard {
  file: string;
  tensors: PlannedTensor[];
  /** The header bytes: 8-byte length + JSON padded with spaces to a multiple of 8. */
  header: Uint8Array;
  dataLength: number;
}

export interface ShardPlan {
  shards: PlannedShard[];
  /** Sum of tensor bytes (what `metadata.total_size` of the index holds). */
  totalSize: number;
  /** Shard file of every tensor. */
  weightMap: Map<string, string>;
}

/**
 * Plans shards as transformers' `save_pretrained` does: tensors in the given order, a new shard
 * whenever the next tensor would push the current one past `maxShardSize` (a tensor larger than
 * the limit gets a shard of its own). Inside a shard, tensors are laid out as the safetensors library
 * does (`safetensorsLayoutOrder`: dtype rank descending, then name), so every tensor is aligned to its
 * element size and the bytes match a file torch's save_file writes.
 */
export function planShards(specs: readonly TensorSpec[], maxShardSize: number, options: { metadata?: Record<string, string> | null } = {}): ShardPlan {
  const groups: TensorSpec[][] = [];
  let current: TensorSpec[] = [];
  let currentSize = 0;
  const seen = new Set<string>();
  for (const s of specs) {
    if (seen.has(s.name)) throw new RxquantError(`output tensor "${s.name}" is planned twice`);
    seen.add(s.name);
    const bytes = numelOf(s.shape) * dtypeSize(s.dtype);
    if (current.length > 0 && currentSize + bytes > maxShardSize) {
      groups.push(current);
      current = [];
      currentSize = 0;
    }
    current.push(s);
    currentSize += bytes;
  }
  if (current.length > 0 || groups.length === 0) groups.push(current);
  const n = groups.length;
  const weightMap = new Map<string, string>();
  let totalSize = 0;
  const shards = groups.map((group, i) => {
    const file = n === 1 ? SINGLE_FILE : `model-${String(i + 1).padStart(5, '0')}-of-${String(n).padStart(5, '0')}.safetensors`;
    const ordered = [...group].sort(safetensorsLayoutOrder);
    let offset = 0;
    const tensors: PlannedTensor[] = ordered.map((s) => {
      const byteLength = numelOf(s.shape) * dtypeSize(s.dtype);
      const t = { name: s.name, dtype: s.dtype, shape: [...s.shape], offset, byteLength };
      offset += byteLength;
      weightMap.set(s.name, file);
      return t;
    });
    totalSize += offset;
    return { file, tensors, header: encodeHeader(tensors, options.metadata === undefined ? undefined : options.metadata), dataLength: offset };
  });
  return { shards, totalSize, weightMap };
}

/**
 * Serializes a safetensors header with `__metadata__: {"format": "pt"}` like transformers; `null`:
 * no `__metadata__` at all, as safetensors' save_file without metadata writes it.
 */
export function encodeHeader(tensors: readonly PlannedTensor[], metadata: Record<string, string> | null = { format: 'pt' }): Uint8Array {
  const obj: Record<string, unknown> = metadata ? { __metadata__: metadata } : {};
  for (const t of tensors) obj[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [t.offset, t.offset + t.byteLength] };
  let json = JSON.stringify(obj);
  const len = Buffer.byteLength(json);
  json += ' '.repeat((8 - (len % 8)) % 8);
  const body = Buffer.from(json, 'utf8');
  const out = new Uint8Array(8 + body.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(body.length), true);
  out.set(body, 8);
  return out;
}

export interface ShardWriterOptions {
  /** Replace an existing non-empty output folder. */
  overwrite?: boolean;
  /**
   * Make the export resumable: a journal in the temporary folder records each completed unit, keyed
   * by this fingerprint of the source and options. A later run with the same fingerprint continues
   * where the last one stopped; a different one is refused unless `restart`.
   */
  fingerprint?: string;
  /** Discard an interrupted export of a different source or options. */
  restart?: boolean;
  /**
   * Write with O_DIRECT where the file system allows it (default true): steady disk speed and no
   * output in the page cache. False sends every write through the page cache.
   */
  directIO?: boolean;
}

/** The resume journal kept in the temporary folder. */
export const JOURNAL = 'rxquant-journal.json';

interface Journal {
  fingerprint: string;
  /** Units (and the tensors they wrote) whose bytes are on disk. */
  done: Record<string, string[]>;
}

/** The temporary folder an export is built in, beside its destination. */
export function tempDirFor(outDir: string): string {
  const abs = resolve(outDir);
  return join(dirname(abs), `.${basename(abs)}.rxquant-partial`);
}

/**
 * Writes a planned set of shards. Headers are written first; tensor data then arrives in any order
 * (whole tensors or byte ranges of them) and goes to its planned place with positioned writes.
 * Everything happens in a temporary folder beside the destination, renamed into place by `finish()`
 * only once every tensor has been written exactly once.
 */
export class ShardWriter {
  private handles = new Map<string, AlignedFile>();
  private staging = new StagingPool();
  private located = new Map<string, { shard: PlannedShard; tensor: PlannedTensor; handle: string }>();
  /** Written byte ranges per tensor, kept sorted and disjoint. */
  private written = new Map<string, [number, number][]>();
  private finished = false;
  private journal: Journal | undefined;
  private lock: OutputLock | undefined;

  private constructor(
    readonly outDir: string,
    readonly tempDir: string,
    readonly plan: ShardPlan,
  ) {}

  static async create(outDir: string, plan: ShardPlan, options: ShardWriterOptions = {}): Promise<ShardWriter> {
    const abs = resolve(outDir);
    await checkDestination(abs, options.overwrite ?? false);
    await checkFreeSpace(dirname(abs), plan.totalSize + plan.shards.reduce((a, s) => a + s.header.length, 0) + 16 * 2 ** 20);
    const tmp = tempDirFor(abs);
    try {
      await mkdir(dirname(abs), { recursive: true });
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      // EEXIST from a recursive mkdir: the path exists as something other than a folder
      throw new OutputError(`${dirname(abs)}: cannot create the output folder (${code === 'EEXIST' ? 'ENOTDIR' : code ?? (e as Error).message})`);
    }
    const lock = await OutputLock.acquire(`${tmp}.lock`, abs);
    try {
      return await ShardWriter.createLocked(abs, tmp, plan, options, lock);
    } catch (e) {
      await lock.release();
      throw e;
    }
  }

  private static async createLocked(abs: string, tmp: string, plan: ShardPlan, options: ShardWriterOptions, lock: OutputLock): Promise<ShardWriter> {
    // again under the lock: a run that held it until a moment ago may have just put its export there
    await checkDestination(abs, options.overwrite ?? false);
    const journal = options.fingerprint ? await readJournal(tmp) : undefined;
    const resuming = journal !== undefined && journal.fingerprint === options.fingerprint;
    if (journal && !resuming && !options.restart) {
      throw new OutputError(
        `${tmp} holds an interrupted export of a different source, format or options; run with --restart to discard it, or repeat the original command to resume it`,
      );
    }
    if (!resuming) {
      try {
        await rm(tmp, { recursive: true, force: true });
        await mkdir(tmp, { recursive: true });
      } catch (e) {
        throw new OutputError(`${dirname(abs)}: cannot create the output folder (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
      }
    }
    const w = new ShardWriter(abs, tmp, plan);
    w.lock = lock;
    w.journal = options.fingerprint ? (resuming ? journal! : { fingerprint: options.fingerprint, done: {} }) : undefined;
    try {
      for (const shard of plan.shards) {
        const p = join(tmp, shard.file);
        const h = await AlignedFile.open(p, shard.header.length + shard.dataLength, w.staging, { existing: resuming, direct: options.directIO });
        w.handles.set(shard.file, h);
        if (!resuming) await h.write(shard.header, 0);
        for (const t of shard.tensors) w.located.set(t.name, { shard, tensor: t, handle: shard.file });
      }
      if (resuming) {
        for (const names of Object.values(journal!.done)) for (const n of names) w.markWritten(n, 0, w.tensor(n).byteLength);
      } else if (w.journal) {
        await w.saveJournal();
      }
    } catch (e) {
      await w.abort(false);
      throw e instanceof RxquantError ? e : new OutputError(`${tmp}: ${(e as Error).message}`);
    }
    return w;
  }

  /** The planned layout of one output tensor. */
  tensor(name: string): PlannedTensor {
    const loc = this.located.get(name);
    if (!loc) throw new RxquantError(`output tensor "${name}" is not in the shard plan`);
    return loc.tensor;
  }

  /** Writes `data` at byte `offset` of tensor `name`. Ranges of one tensor must not overlap. */
  async write(name: string, data: Uint8Array, offset = 0): Promise<void> {
    const loc = this.located.get(name);
    if (!loc) throw new RxquantError(`output tensor "${name}" is not in the shard plan`);
    const end = offset + data.length;
    if (offset < 0 || end > loc.tensor.byteLength) {
      throw new RxquantError(`output tensor "${name}": write of bytes [${offset}, ${end}) outside its ${loc.tensor.byteLength} bytes`);
    }
    this.markWritten(name, offset, end);
    await this.handles.get(loc.handle)!.write(data, loc.shard.header.length + loc.tensor.offset + offset);
  }

  markWritten(name: string, start: number, end: number): void {
    if (start === end) return;
    const ranges = this.written.get(name) ?? [];
    let i = 0;
    while (i < ranges.length && ranges[i]![1] <= start) i++;
    if (i < ranges.length && ranges[i]![0] < end) {
      throw new RxquantError(`output tensor "${name}": bytes [${start}, ${end}) written twice`);
    }
    ranges.splice(i, 0, [start, end]);
    // merge neighbours so complete tensors hold a single range
    for (let j = Math.max(0, i - 1); j < ranges.length - 1; ) {
      if (ranges[j]![1] === ranges[j + 1]![0]) {
        ranges[j]![1] = ranges[j + 1]![1];
        ranges.splice(j + 1, 1);
      } else j++;
    }
    this.written.set(name, ranges);
  }

  /** Units already on disk from an interrupted run (resuming), by id. */
  doneUnits(): Set<string> {
    return new Set(Object.keys(this.journal?.done ?? {}));
  }

  /**
   * Records that units' tensors are on disk: flushes the shards first, so a crash after this point
   * never loses what the journal claims (power loss included). The flush waits for the disk, so
   * callers batch units (see writeShards' `checkpointEvery`).
   */
  async commitUnits(units: { id: string; tensors: string[] }[]): Promise<void> {
    if (!this.journal || units.length === 0) return;
    for (const h of this.handles.values()) await h.flush();
    for (const u of units) this.journal.done[u.id] = u.tensors;
    await this.saveJournal();
  }

  private async saveJournal(): Promise<void> {
    const p = join(this.tempDir, JOURNAL);
    await writeFile(`${p}.tmp`, JSON.stringify(this.journal));
    await rename(`${p}.tmp`, p);
  }

  /** Names of planned tensors not yet completely written. */
  missing(): string[] {
    const out: string[] = [];
    for (const [name, loc] of this.located) {
      const r = this.written.get(name);
      const complete = loc.tensor.byteLength === 0 || (r?.length === 1 && r[0]![0] === 0 && r[0]![1] === loc.tensor.byteLength);
      if (!complete) out.push(name);
    }
    return out;
  }

  /** Writes a side file (config.json, tokenizer, ...) into the output folder. */
  async writeSideFile(name: string, content: string | Uint8Array): Promise<void> {
    await writeFile(join(this.tempDir, name), content);
  }

  /** Checks completeness, writes the index (more than one shard), and renames the folder into place. */
  async finish(): Promise<void> {
    if (this.finished) return;
    const missing = this.missing();
    if (missing.length > 0) {
      await this.abort();
      throw new RxquantError(`export incomplete: ${missing.length} tensor(s) never written, e.g. "${missing[0]}"`);
    }
    try {
      for (const [file, h] of this.handles) {
        await h.close();
        this.handles.delete(file);
      }
    } catch (e) {
      await this.abort();
      throw e;
    }
    if (this.plan.shards.length > 1) {
      await writeFile(join(this.tempDir, INDEX_FILE), indexJson(this.plan));
    }
    await rm(join(this.tempDir, JOURNAL), { force: true });
    await moveIntoPlace(this.tempDir, this.outDir);
    this.finished = true;
    await this.lock?.release();
  }

  /** Closes everything and removes the temporary folder; the destination is left as it was. */
  async abort(releaseLock = true): Promise<void> {
    for (const h of this.handles.values()) await h.release();
    this.handles.clear();
    await rm(this.tempDir, { recursive: true, force: true });
    if (releaseLock) await this.lock?.release();
  }
}

/** `model.safetensors.index.json` as transformers writes it (indent 2, sorted keys). */
export function indexJson(plan: ShardPlan): string {
  const weightMap: Record<string, string> = {};
  for (const name of [...plan.weightMap.keys()].sort()) weightMap[name] = plan.weightMap.get(name)!;
  return JSON.stringify({ metadata: { total_size: plan.totalSize }, weight_map: weightMap }, null, 2) + '\n';
}

async function readJournal(tmp: string): Promise<Journal | undefined> {
  try {
    const j = JSON.parse(await readFile(join(tmp, JOURNAL), 'utf8')) as Journal;
    return typeof j.fingerprint === 'string' && j.done && typeof j.done === 'object' ? j : undefined;
  } catch {
    return undefined;
  }
}

async function checkDestination(abs: string, overwrite: boolean): Promise<void> {
  let st;
  try {
    st = await stat(abs);
  } catch {
    return; // does not exist: fine
  }
  if (!st.isDirectory()) throw new OutputError(`${abs}: exists and is not a folder`);
  const entries = await readdir(abs);
  if (entries.length > 0 && !overwrite) {
    throw new OutputError(`${abs}: output folder exists and is not empty (pass --overwrite to replace it)`);
  }
  if (entries.length > 0 && !(await isEarlierExport(abs, entries))) {
    throw new OutputError(
      `${abs}: --overwrite replaces only an earlier rxquant export or an empty folder, and this folder holds something else (e.g. "${entries.sort()[0]}"); remove it yourself or choose another output folder`,
    );
  }
}

/**
 * An earlier export: plain files only, with the two quantization configs an export writes
 * (hf_quant_config.json, and config.json's quantization_config from ModelOpt). A model folder, a
 * home folder or a project folder is none of these.
 */
async function isEarlierExport(dir: string, entries: string[]): Promise<boolean> {
  if (!entries.includes('hf_quant_config.json') || !entries.includes('config.json')) return false;
  for (const e of entries) if (!(await stat(join(dir, e))).isFile()) return false;
  try {
    const cfg = JSON.parse(await readFile(join(dir, 'config.json'), 'utf8'));
    return cfg?.quantization_config?.quant_method === 'modelopt';
  } catch {
    return false;
  }
}

/** Free bytes on the file system that holds `dir` (asking its nearest existing parent), if it can be told. */
export async function freeBytes(dir: string): Promise<number | undefined> {
  for (let probe = dir; ; probe = dirname(probe)) {
    try {
      const st = await statfs(probe);
      return st.bavail * st.bsize;
    } catch {
      if (dirname(probe) === probe) return undefined;
    }
  }
}

/** Refuses to start an export that cannot fit: better now than a full disk at the last shard. */
async function checkFreeSpace(dir: string, needed: number): Promise<void> {
  const free = await freeBytes(dir);
  // undefined: cannot tell, the writes will report a full disk
  if (free !== undefined && free < needed) {
    throw new OutputError(`${dir}: not enough free disk space: the export needs ${formatBytes(needed)}, ${formatBytes(free)} are free`);
  }
}

async function moveIntoPlace(tmp: string, dest: string): Promise<void> {
  const old = `${tmp}-old`;
  let hadOld = false;
  try {
    await rename(dest, old);
    hadOld = true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw new OutputError(`${dest}: cannot replace (${(e as Error).message})`);
  }
  try {
    await rename(tmp, dest);
  } catch (e) {
    if (hadOld) await rename(old, dest).catch(() => undefined);
    throw new OutputError(`${dest}: cannot move the finished export into place (${(e as Error).message})`);
  }
  if (hadOld) await rm(old, { recursive: true, force: true });
}
