/**
 * Reading a torch.save archive (spec megatron.md §5) that sits at [offset, offset + length) of a
 * file: a whole `common.pt`, or one item of a `.distcp` data file (items are back to back). The
 * archive is a STORED zip whose local headers carry no sizes (flag bit 3): sizes come from the
 * central directory, found through the end-of-central-directory record (zip64 when its fields
 * overflow), with offsets relative to the archive's start. `<prefix>/data.pkl` is a protocol-2
 * pickle whose tensors name their storage by persistent id ('storage', <dtype>Storage, key,
 * location, numel); the storage's bytes are the entry `<prefix>/data/<key>`, little-endian.
 */
import type { FileHandle } from 'node:fs/promises';
import { CheckpointError } from '../errors.js';
import type { DType } from '../safetensors/dtypes.js';
import { unpickle, PickleError, type PyTensor, type PyValue } from './pickle.js';

interface Entry {
  /** Offset of the local header, relative to the archive. */
  lho: number;
  size: number;
  method: number;
}

/** A storage a pickle names: its key (the `data/<key>` entry), dtype and element count. */
export interface StorageRef {
  kind: 'storage';
  key: string;
  dtype: DType | undefined;
  storageClass: string;
  numel: number;
}

const STORAGE_DTYPES: Record<string, DType> = {
  BFloat16Storage: 'BF16',
  HalfStorage: 'F16',
  FloatStorage: 'F32',
  DoubleStorage: 'F64',
  ByteStorage: 'U8',
  CharStorage: 'I8',
  ShortStorage: 'I16',
  IntStorage: 'I32',
  LongStorage: 'I64',
  BoolStorage: 'BOOL',
};

/** torch dtype names (v3 rebuilds, `.metadata` properties) as safetensors dtypes. */
export const TORCH_DTYPES: Record<string, DType> = {
  bfloat16: 'BF16',
  float16: 'F16',
  half: 'F16',
  float32: 'F32',
  float: 'F32',
  float64: 'F64',
  uint8: 'U8',
  int8: 'I8',
  int16: 'I16',
  int32: 'I32',
  int64: 'I64',
  bool: 'BOOL',
  float8_e4m3fn: 'F8_E4M3',
  float8_e5m2: 'F8_E5M2',
};

export class TorchSaveArchive {
  private constructor(
    private readonly fh: FileHandle,
    /** Where the archive starts in the file. */
    readonly offset: number,
    readonly length: number,
    private readonly entries: Map<string, Entry>,
    /** For messages: the file and the item. */
    readonly where: string,
  ) {}

  static async open(fh: FileHandle, offset: number, length: number, where: string): Promise<TorchSaveArchive> {
    const fail = (msg: string): never => {
      throw new CheckpointError(where, `not a torch.save archive: ${msg}`);
    };
    const read = async (at: number, n: number) => {
      if (at < 0 || at + n > length) fail(`a read of [${at}, ${at + n}) outside the item's ${length} bytes`);
      const b = Buffer.alloc(n);
      const { bytesRead } = await fh.read(b, 0, n, offset + at);
      if (bytesRead !== n) fail(`the file ends ${n - bytesRead} bytes early (truncated?)`);
      return b;
    };
    const tailLen = Math.min(length, 65536 + 22);
    const tail = await read(length - tailLen, tailLen);
    // the end-of-central-directory record: the last PK\5\6 whose comment reaches the end
    let e = -1;
    for (let i = tail.length - 22; i >= 0; i--) {
      if (tail.readUInt32LE(i) === 0x06054b50 && i + 22 + tail.readUInt16LE(i + 20) === tail.length) {
        e = i;
        break;
      }
    }
    if (e < 0) fail('no end-of-central-directory record');
    let count = tail.readUInt16LE(e + 10);
    let cdSize = tail.readUInt32LE(e + 12);
    let cdOffset = tail.readUInt32LE(e + 16);
    if (count === 0xffff || cdSize === 0xffffffff || cdOffset === 0xffffffff) {
      const loc = e - 20;
      if (loc < 0 || tail.readUInt32LE(loc) !== 0x07064b50) fail('zip64 fields without a zip64 locator');
      const z = Number(tail.readBigUInt64LE(loc + 8));
      const rec = await read(z, 56);
      if (rec.readUInt32LE(0) !== 0x06064b50) fail('no zip64 end-of-central-directory record where the locator points');
      count = Number(rec.readBigUInt64LE(32));
      cdSize = Number(rec.readBigUInt64LE(40));
      cdOffset = Number(rec.readBigUInt64LE(48));
    }
    const cd = await read(cdOffset, cdSize);
    const entries = new Map<string, Entry>();
    let p = 0;
    for (let i = 0; i < count; i++) {
      if (p + 46 > cd.length || cd.readUInt32LE(p) !== 0x02014b50) fail(`central directory entry ${i} is malformed`);
      const method = cd.readUInt16LE(p + 10);
      let size = cd.readUInt32LE(p + 24);
      const csize = cd.readUInt32LE(p + 20);
      const nameLen = cd.readUInt16LE(p + 28), extraLen = cd.readUInt16LE(p + 30), commentLen = cd.readUInt16LE(p + 32);
      let lho = cd.readUInt32LE(p + 42);
      const name = cd.toString('utf8', p + 46, p + 46 + nameLen);
      // zip64 extra (id 1): the 8-byte values of the fields that overflowed, in order
      let x = p + 46 + nameLen;
      const xEnd = x + extraLen;
      while (x + 4 <= xEnd) {
        const id = cd.readUInt16LE(x), n = cd.readUInt16LE(x + 2);
        if (id === 1) {
          let q = x + 4;
          if (size === 0xffffffff) (size = Number(cd.readBigUInt64LE(q))), (q += 8);
          if (csize === 0xffffffff) q += 8;
          if (lho === 0xffffffff) lho = Number(cd.readBigUInt64LE(q));
        }
        x += 4 + n;
      }
      if (method !== 0) fail(`entry "${name}" is compressed (method ${method}); torch.save stores entries uncompressed`);
      entries.set(name, { lho, size, method });
      p += 46 + nameLen + extraLen + commentLen;
    }
    return new TorchSaveArchive(fh, offset, length, entries, where);
  }

  /** The entry whose name ends with `/suffix` (torch prefixes every name with the archive's name). */
  private find(suffix: string): [string, Entry] | undefined {
    for (const [n, e] of this.entries) if (n === suffix || n.endsWith(`/${suffix}`)) return [n, e];
    return undefined;
  }

  /** Absolute file offset and size of an entry's data. */
  async locate(suffix: string): Promise<{ at: number; size: number }> {
    const found = this.find(suffix);
    if (!found) throw new CheckpointError(this.where, `torch.save archive has no entry "${suffix}"`);
    const [name, e] = found;
    const h = Buffer.alloc(30);
    await this.fh.read(h, 0, 30, this.offset + e.lho);
    if (h.readUInt32LE(0) !== 0x04034b50) throw new CheckpointError(this.where, `entry "${name}": no local header at ${e.lho}`);
    const start = e.lho + 30 + h.readUInt16LE(26) + h.readUInt16LE(28);
    if (start + e.size > this.length) throw new CheckpointError(this.where, `entry "${name}" runs past the item's end`);
    return { at: this.offset + start, size: e.size };
  }

  async entryBytes(suffix: string): Promise<Uint8Array> {
    const { at, size } = await this.locate(suffix);
    const b = new Uint8Array(size);
    const { bytesRead } = await this.fh.read(b, 0, size, at);
    if (bytesRead !== size) throw new CheckpointError(this.where, `entry "${suffix}": the file ends early (truncated?)`);
    return b;
  }

  /** The archive's object (data.pkl), its storages as StorageRef. Refuses big-endian archives. */
  async object(): Promise<PyValue> {
    if (this.find('byteorder')) {
      const order = new TextDecoder().decode(await this.entryBytes('byteorder')).trim();
      if (order !== 'little') throw new CheckpointError(this.where, `byteorder "${order}": only little-endian archives are read`);
    }
    const pkl = await this.entryBytes('data.pkl');
    try {
      return unpickle(
        pkl,
        (id) => {
          // ('storage', StorageClass, key, location, numel)
          if (!Array.isArray(id) || id[0] !== 'storage') throw new PickleError(`a persistent id that is not a storage`);
          const cls = id[1] as { kind?: string; name?: string };
          const storageClass = cls && cls.kind === 'global' ? cls.name! : String(cls);
          const ref: StorageRef = { kind: 'storage', key: String(id[2]), dtype: STORAGE_DTYPES[storageClass], storageClass, numel: Number(id[4]) };
          return ref as unknown as PyValue;
        },
        `${this.where} data.pkl`,
      );
    } catch (e) {
      if (e instanceof PickleError) throw new CheckpointError(this.where, e.message);
      throw e;
    }
  }
}

/** A tensor of an archive: its dtype, shape and where its row-major bytes are in the file. */
export interface StoredTensor {
  dtype: DType;
  shape: number[];
  /** Absolute offset of the first element in the file. */
  at: number;
  byteLength: number;
}

/**
 * The tensor a tensor item holds (`torch.save(chunk)`), checked: a known dtype (the v3 dtype when
 * given), a row-major stride, and the storage holding every element.
 */
export async function storedTensor(archive: TorchSaveArchive, value: PyValue, dtypeSize: (d: DType) => number): Promise<StoredTensor> {
  const t = value as PyTensor;
  if (!t || typeof t !== 'object' || !('kind' in t) || t.kind !== 'tensor') throw new CheckpointError(archive.where, 'the item is not a tensor');
  const s = t.storage as unknown as StorageRef;
  if (!s || s.kind !== 'storage') throw new CheckpointError(archive.where, 'the tensor names no storage');
  const dtype = (t.dtype !== undefined ? TORCH_DTYPES[t.dtype] : undefined) ?? s.dtype;
  if (!dtype) throw new CheckpointError(archive.where, `storage class ${s.storageClass}${t.dtype ? ` (dtype ${t.dtype})` : ''} is not a dtype rxquant reads`);
  let expect = 1;
  for (let i = t.size.length - 1; i >= 0; i--) {
    if (t.size[i]! > 1 && t.stride[i] !== expect) throw new CheckpointError(archive.where, `stride [${t.stride.join(', ')}] of size [${t.size.join(', ')}] is not row-major`);
    expect *= t.size[i]!;
  }
  const numel = t.size.reduce((a, b) => a * b, 1);
  const size = dtypeSize(dtype);
  const { at, size: stored } = await archive.locate(`data/${s.key}`);
  if ((t.storageOffset + numel) * size > stored) throw new CheckpointError(archive.where, `storage data/${s.key} holds ${stored} bytes, fewer than the tensor needs`);
  return { dtype, shape: t.size, at: at + t.storageOffset * size, byteLength: numel * size };
}
