/**
 * A torch.distributed.checkpoint folder (Megatron-Core's `torch_dist` format, spec megatron.md
 * §2-6) as tensor sources: `.metadata` (a pickle) gives each key's global dtype and shape, the
 * chunks that tile it (offsets and sizes in elements) and, per chunk, the byte range of a
 * `.distcp` file holding it as a torch.save archive. A key's source reads any rows of the global
 * tensor by reading, from each chunk that overlaps them, just those rows, and placing each at its
 * offsets. Nothing is read at open beyond `.metadata`; an archive's header is parsed the first time
 * its chunk is read. Bytes items (`_extra_state`, the common state) are listed, not read.
 */
import { open, readFile, stat, type FileHandle } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { CheckpointError } from '../errors.js';
import { checkedProduct, dtypeSize, type DType } from '../safetensors/dtypes.js';
import { View } from './views.js';
import { attr, className, unpickle, PickleError, type PyValue } from './pickle.js';
import { storedTensor, TorchSaveArchive, TORCH_DTYPES, type StoredTensor } from './torch-save.js';
import { checkByteRange, checkRowRange, destination, type TensorSource } from './source.js';

interface Chunk {
  offsets: number[];
  sizes: number[];
  file: string;
  offset: number;
  length: number;
  /** Where the chunk's bytes are, once its archive was read. */
  stored?: Promise<StoredTensor>;
}

export interface DcpCheckpoint {
  /** The folder holding `.metadata`. */
  dir: string;
  /** Every tensor key, as a source of its global tensor. */
  tensors: Map<string, TensorSource>;
  /** Keys of bytes items (`..._extra_state/shard_0_2`, `common_state/shard_0_1`). */
  bytesKeys: string[];
  /** The object a bytes item holds (torch.save([obj]): the list's one element). */
  readBytesItem(key: string): Promise<PyValue>;
  close(): Promise<void>;
}

const ints = (v: PyValue | undefined, what: string): number[] => {
  if (!Array.isArray(v) || !v.every((x) => typeof x === 'number' && Number.isSafeInteger(x) && x >= 0)) throw new PickleError(`${what}: expected a tuple of sizes`);
  return v as number[];
};

/** Opens a DCP folder: parses `.metadata` and checks that every tensor's chunks tile it, with a file range each. */
export async function openDcp(dir: string): Promise<DcpCheckpoint> {
  const metaPath = join(dir, '.metadata');
  let meta: PyValue;
  try {
    meta = unpickle(await readFile(metaPath), undefined, metaPath);
  } catch (e) {
    if (e instanceof PickleError) throw new CheckpointError(metaPath, e.message);
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new CheckpointError(metaPath, 'missing: a torch_dist checkpoint needs its .metadata');
    throw e;
  }
  if (className(meta) !== 'torch.distributed.checkpoint.metadata.Metadata') throw new CheckpointError(metaPath, `holds ${className(meta) ?? 'something else'}, not a torch.distributed.checkpoint Metadata`);
  const sdm = attr(meta, 'state_dict_metadata');
  const sd = attr(meta, 'storage_data');
  if (!(sdm instanceof Map) || !(sd instanceof Map)) throw new CheckpointError(metaPath, 'Metadata without state_dict_metadata or storage_data');
  // storage_data's keys are MetadataIndex objects: indexed here by fqn and offsets
  const where = new Map<string, { file: string; offset: number; length: number }>();
  for (const [k, v] of sd) {
    const fqn = attr(k, 'fqn');
    const off = attr(k, 'offset');
    const file = attr(v, 'relative_path'), offset = attr(v, 'offset'), length = attr(v, 'length');
    if (typeof fqn !== 'string' || typeof file !== 'string' || typeof offset !== 'number' || typeof length !== 'number') throw new CheckpointError(metaPath, 'a storage_data entry without fqn, relative_path, offset or length');
    if (attr(v, 'transform_descriptors')) throw new CheckpointError(metaPath, `${fqn}: stored with stream transforms (compression), which rxquant does not read`);
    where.set(`${fqn}|${off == null ? '' : ints(off, fqn).join(',')}`, { file, offset, length });
  }
  // every file .metadata names exists and holds every item it places there (a lost rank's file, a
  // truncated copy): refused here, before any work, naming the file and a key stored in it
  const ends = new Map<string, { end: number; key: string }>();
  for (const [k, w] of where) {
    const e = ends.get(w.file);
    if (!e || w.offset + w.length > e.end) ends.set(w.file, { end: w.offset + w.length, key: k.slice(0, k.indexOf('|')) });
  }
  for (const [file, { end, key }] of ends) {
    const path = join(dir, file);
    const size = await stat(path).then((st) => st.size, () => -1);
    if (size < 0) throw new CheckpointError(path, `missing: .metadata places chunks of "${key}" and others in it (a rank's file not copied?)`);
    if (size < end) throw new CheckpointError(path, `truncated: ${size} bytes, but .metadata places "${key}" up to byte ${end}`);
  }
  const files = new Map<string, Promise<FileHandle>>();
  const handle = (file: string) => {
    let h = files.get(file);
    if (!h) {
      h = open(join(dir, file), 'r').catch((e: NodeJS.ErrnoException) => {
        throw new CheckpointError(join(dir, file), e.code === 'ENOENT' ? 'missing (named by .metadata)' : e.message);
      });
      files.set(file, h);
    }
    return h;
  };
  const tensors = new Map<string, TensorSource>();
  const bytesKeys: string[] = [];
  for (const [key, md] of sdm) {
    if (typeof key !== 'string') continue;
    const cls = className(md);
    if (cls?.endsWith('.BytesStorageMetadata')) {
      bytesKeys.push(key);
      continue;
    }
    if (!cls?.endsWith('.TensorStorageMetadata')) throw new CheckpointError(metaPath, `${key}: ${cls ?? 'an unknown entry'}, not tensor or bytes metadata`);
    const props = attr(md, 'properties');
    const propsState = props && typeof props === 'object' && 'kind' in props && props.kind === 'object' ? props.state : undefined;
    const dt = Array.isArray(propsState) ? propsState[0] : attr(props ?? null, 'dtype');
    const dtName = dt && typeof dt === 'object' && 'kind' in dt && dt.kind === 'global' ? dt.name : undefined;
    const dtype = dtName ? TORCH_DTYPES[dtName] : undefined;
    if (!dtype) throw new CheckpointError(metaPath, `${key}: dtype ${dtName ?? '(none)'} is not one rxquant reads`);
    const shape = ints(attr(md, 'size') ?? null, `${key} size`);
    const list = attr(md, 'chunks');
    if (!Array.isArray(list)) throw new CheckpointError(metaPath, `${key}: no chunk list`);
    const chunks: Chunk[] = list.map((c, i) => {
      const offsets = ints(attr(c, 'offsets') ?? null, `${key} chunk ${i} offsets`), sizes = ints(attr(c, 'sizes') ?? null, `${key} chunk ${i} sizes`);
      if (offsets.length !== shape.length || sizes.length !== shape.length || offsets.some((o, d) => o + sizes[d]! > shape[d]!)) {
        throw new CheckpointError(metaPath, `${key}: chunk at [${offsets.join(', ')}] of [${sizes.join(', ')}] lies outside [${shape.join(', ')}]`);
      }
      const w = where.get(`${key}|${offsets.join(',')}`);
      if (!w) throw new CheckpointError(metaPath, `${key}: chunk at [${offsets.join(', ')}] has no storage_data entry (a missing chunk)`);
      return { offsets, sizes, ...w };
    });
    const covered = chunks.reduce((a, c) => a + checkedProduct(c.sizes), 0);
    const numel = checkedProduct(shape);
    if (covered !== numel) throw new CheckpointError(metaPath, `${key}: its chunks hold ${covered} of its ${numel} elements (a missing chunk?)`);
    tensors.set(key, new ChunkedTensor(key, dtype, shape, chunks, dir, handle));
  }
  return {
    dir,
    tensors,
    bytesKeys,
    async readBytesItem(key) {
      const w = where.get(`${key}|`);
      if (!w) throw new CheckpointError(metaPath, `bytes item "${key}" has no storage_data entry`);
      const archive = await TorchSaveArchive.open(await handle(w.file), w.offset, w.length, `${join(dir, w.file)} (${key})`);
      const v = await archive.object();
      return Array.isArray(v) && v.length === 1 ? v[0]! : v;
    },
    async close() {
      const hs = [...files.values()];
      files.clear();
      await Promise.all(hs.map((h) => h.then((f) => f.close(), () => undefined)));
    },
  };
}

/** A global tensor of a DCP checkpoint, read from the chunks that tile it. */
class ChunkedTensor extends View {
  private readonly size: number;

  constructor(
    name: string,
    dtype: DType,
    shape: readonly number[],
    private readonly chunks: Chunk[],
    private readonly dir: string,
    private readonly handle: (file: string) => Promise<FileHandle>,
  ) {
    super(name, dtype, shape, `${resolve(dir)} (torch_dist key ${name})`);
    this.size = dtypeSize(dtype);
  }

  private stored(c: Chunk): Promise<StoredTensor> {
    c.stored ??= (async () => {
      const where = `${join(this.dir, c.file)} (${this.name} at [${c.offsets.join(', ')}])`;
      const archive = await TorchSaveArchive.open(await this.handle(c.file), c.offset, c.length, where);
      const t = await storedTensor(archive, await archive.object(), dtypeSize);
      if (t.dtype !== this.dtype) throw new CheckpointError(where, `chunk stored as ${t.dtype}, .metadata says ${this.dtype}`);
      if (t.shape.length !== c.sizes.length || t.shape.some((d, i) => d !== c.sizes[i])) throw new CheckpointError(where, `chunk of shape [${t.shape.join(', ')}], .metadata says [${c.sizes.join(', ')}]`);
      return t;
    })();
    return c.stored;
  }

  async readRows(start: number, end: number, into?: Uint8Array): Promise<Uint8Array> {
    checkRowRange(this, start, end);
    return this.readBytes(start * this.rowBytes, end * this.rowBytes, into);
  }

  /**
   * Any byte range. The tensor is read as "lines" of its last dimension: a range aligned to lines
   * (what the views ask: rows of one layer of a stacked key) reads from each chunk only the lines of
   * it that fall in the range (a contiguous run of the chunk's own lines, as both are row-major) and
   * places each at its global line and column; an unaligned range reads the lines that hold it.
   */
  override async readBytes(start: number, end: number, into?: Uint8Array): Promise<Uint8Array> {
    checkByteRange(this, start, end);
    const dest = destination(this.name, end - start, into);
    if (end === start) return dest;
    const nd = this.shape.length;
    const lineElems = nd === 0 ? 1 : this.shape[nd - 1]!;
    const lineBytes = lineElems * this.size;
    const a = Math.floor(start / lineBytes), b = Math.ceil(end / lineBytes);
    if (a * lineBytes !== start || b * lineBytes !== end) {
      const lines = await this.readBytes(a * lineBytes, b * lineBytes);
      dest.set(lines.subarray(start - a * lineBytes, end - a * lineBytes));
      return dest;
    }
    // global line index of multi-index (i_0 .. i_{nd-2}): row-major over shape[:-1]
    const lead = nd <= 1 ? [] : this.shape.slice(0, nd - 1);
    const gstride = lead.map((_, d) => lead.slice(d + 1).reduce((x, y) => x * y, 1));
    for (const c of this.chunks) {
      const cLead = nd <= 1 ? [] : c.sizes.slice(0, nd - 1);
      const cLines = cLead.reduce((x, y) => x * y, 1);
      // the global line of the chunk's line j (monotonic in j)
      const globalLine = (j: number) => {
        let g = 0;
        for (let d = cLead.length - 1; d >= 0; d--) {
          const size = cLead[d]!;
          g += (c.offsets[d]! + (j % size)) * gstride[d]!;
          j = Math.floor(j / size);
        }
        return g;
      };
      const firstAtLeast = (v: number) => {
        let lo = 0, hi = cLines;
        while (lo < hi) {
          const mid = (lo + hi) >> 1;
          if (globalLine(mid) < v) lo = mid + 1;
          else hi = mid;
        }
        return lo;
      };
      const j0 = firstAtLeast(a), j1 = firstAtLeast(b);
      if (j0 >= j1) continue;
      const t = await this.stored(c);
      const cLineBytes = (nd === 0 ? 1 : c.sizes[nd - 1]!) * this.size;
      const fh = await this.handle(c.file);
      const readInto = async (buf: Uint8Array) => {
        const { bytesRead } = await fh.read(buf, 0, buf.length, t.at + j0 * cLineBytes);
        if (bytesRead !== buf.length) throw new CheckpointError(join(this.dir, c.file), `${this.name}: the file ends early (truncated?)`);
      };
      if (cLineBytes === lineBytes && globalLine(j1 - 1) - globalLine(j0) === j1 - 1 - j0) {
        // whole lines, consecutive in the tensor too (stacked layers, row-split chunks): read in place
        const at = (globalLine(j0) - a) * lineBytes;
        await readInto(dest.subarray(at, at + (j1 - j0) * lineBytes));
        continue;
      }
      // part of each line (a column-split chunk): read the run, place line by line
      const bytes = new Uint8Array((j1 - j0) * cLineBytes);
      await readInto(bytes);
      const col = (nd === 0 ? 0 : c.offsets[nd - 1]!) * this.size;
      for (let j = j0; j < j1; j++) dest.set(bytes.subarray((j - j0) * cLineBytes, (j - j0 + 1) * cLineBytes), (globalLine(j) - a) * lineBytes + col);
    }
    return dest;
  }
}

/**
 * The checkpoint folder a Megatron save path names (spec §2.5): a save folder with
 * `latest_checkpointed_iteration.txt` (-> iter_%07d or release), a NeMo 2 folder (-> weights/), or
 * the folder itself. Refuses anything that is not `torch_dist` (metadata.json) with the reason.
 */
export async function resolveTorchDist(path: string): Promise<string> {
  let dir = resolve(path);
  const exists = async (p: string) => stat(p).then(() => true, () => false);
  const tracker = join(dir, 'latest_checkpointed_iteration.txt');
  if (await exists(tracker)) {
    const v = (await readFile(tracker, 'utf8')).trim();
    if (v === 'release') dir = join(dir, 'release');
    else if (/^\d+$/.test(v)) dir = join(dir, `iter_${v.padStart(7, '0')}`);
    else throw new CheckpointError(tracker, `holds ${JSON.stringify(v)}, not an iteration number or "release"`);
  } else if (await exists(join(dir, 'weights', '.metadata'))) dir = join(dir, 'weights');
  const mj = join(dir, 'metadata.json');
  if (await exists(mj)) {
    let backend: unknown;
    try {
      backend = JSON.parse(await readFile(mj, 'utf8')).sharded_backend;
    } catch {
      throw new CheckpointError(mj, 'is not valid JSON');
    }
    if (backend !== 'torch_dist') throw new CheckpointError(mj, `sharded_backend ${JSON.stringify(backend)}: rxquant reads torch_dist checkpoints (zarr is deprecated: convert with Megatron's tools)`);
  } else if (!(await exists(join(dir, '.metadata')))) {
    throw new CheckpointError(dir, 'no metadata.json or .metadata: not a torch_dist checkpoint folder (nor a Megatron save folder with latest_checkpointed_iteration.txt)');
  }
  return dir;
}
