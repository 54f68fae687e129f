/**
 * Megatron input against safetensors input, same run: the 5-layer Llama-3.1-8B-shaped synthetic
 * checkpoint rewritten here as a Megatron-Core torch_dist checkpoint (TP=2: two rank files, stacked
 * layers, q/k/v interleaved per query group, fc1 = [gate; up] in four chunks per layer, row-parallel
 * weights split by columns), then `rxquant quantize --hf-config` from it and `rxquant quantize` from
 * the safetensors, each from a cold cache: wall time, peak RSS, and whether the outputs are the
 * same bytes.
 *
 * The writer emits what spec megatron.md §3-5 describes: `.metadata` a pickle of Metadata with
 * TensorStorageMetadata / ChunkStorageMetadata / MetadataIndex / _StorageInfo objects, and each chunk
 * a torch.save zip (data.pkl with _rebuild_tensor_v2 over a persistent BFloat16Storage, byteorder,
 * data/0 at a 64-byte boundary of the item, version, central directory and EOCD), items back to back.
 */
import { mkdirSync, openSync, writeSync, closeSync, rmSync, writeFileSync, existsSync, readdirSync, readSync, readFileSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { createHash } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { openCheckpoint } from '../src/safetensors/checkpoint.js';
import { synthesize } from './synth.js';
import { evictDir, sameFile, timeWithRss } from './util.js';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

/** A protocol-2 pickle emitter: just the opcodes the files need. */
class Pickler {
  private parts: Buffer[] = [Buffer.from([0x80, 0x02])];
  op(...b: number[]) {
    this.parts.push(Buffer.from(b));
    return this;
  }
  global(module: string, name: string) {
    this.parts.push(Buffer.from(`c${module}\n${name}\n`, 'latin1'));
    return this;
  }
  str(s: string) {
    const b = Buffer.from(s, 'utf8');
    const h = Buffer.alloc(5);
    h[0] = 0x58;
    h.writeUInt32LE(b.length, 1);
    this.parts.push(h, b);
    return this;
  }
  int(v: number) {
    if (v >= 0 && v < 2 ** 31) {
      const h = Buffer.alloc(5);
      h[0] = 0x4a;
      h.writeInt32LE(v, 1);
      this.parts.push(h);
    } else {
      const h = Buffer.alloc(10);
      h[0] = 0x8a;
      h[1] = 8;
      h.writeBigInt64LE(BigInt(v), 2);
      this.parts.push(h);
    }
    return this;
  }
  none() {
    return this.op(0x4e);
  }
  bool(v: boolean) {
    return this.op(v ? 0x88 : 0x89);
  }
  mark() {
    return this.op(0x28);
  }
  tuple() {
    return this.op(0x74);
  }
  ints(v: number[]) {
    this.mark();
    for (const x of v) this.int(x);
    return this.tuple();
  }
  size(v: number[]) {
    this.global('torch', 'Size').mark();
    this.ints(v);
    return this.tuple().op(0x52);
  }
  emptyDict() {
    return this.op(0x7d);
  }
  setItems() {
    return this.op(0x75);
  }
  emptyList() {
    return this.op(0x5d);
  }
  appends() {
    return this.op(0x65);
  }
  /** cls() with BUILD(state dict of the entries `fill` pushes as key, value, ...). */
  object(module: string, name: string, fill: () => void) {
    this.global(module, name).mark().tuple().op(0x81);
    this.emptyDict().mark();
    fill();
    return this.setItems().op(0x62);
  }
  persid() {
    return this.op(0x51);
  }
  reduce() {
    return this.op(0x52);
  }
  finish(): Buffer {
    this.op(0x2e);
    return Buffer.concat(this.parts);
  }
}

const MD = 'torch.distributed.checkpoint.metadata';

/** A torch.save of one bf16 tensor of `shape` holding `data`, as a zip whose entries start 64-byte aligned. */
function torchSaveItem(data: Uint8Array, shape: number[]): Buffer {
  const numel = shape.reduce((a, b) => a * b, 1);
  const stride = shape.map((_, i) => shape.slice(i + 1).reduce((a, b) => a * b, 1));
  const p = new Pickler();
  p.global('torch._utils', '_rebuild_tensor_v2').mark();
  p.mark().str('storage').global('torch', 'BFloat16Storage').str('0').str('cpu').int(numel).tuple().persid();
  p.int(0).ints(shape).ints(stride).bool(false).global('collections', 'OrderedDict').mark().tuple().reduce();
  p.tuple().reduce();
  const entries: [string, Uint8Array][] = [
    ['archive/data.pkl', p.finish()],
    ['archive/byteorder', Buffer.from('little')],
    ['archive/data/0', data],
    ['archive/version', Buffer.from('3\n')],
  ];
  const parts: Buffer[] = [];
  const central: Buffer[] = [];
  let at = 0;
  for (const [name, body] of entries) {
    const n = Buffer.from(name);
    // pad the extra field so the data starts at a multiple of 64 from the item's start
    let extra = 64 - ((at + 30 + n.length + 4) % 64);
    if (extra === 64) extra = 0;
    const ex = Buffer.alloc(4 + extra, 0x5a);
    ex.writeUInt16LE(0x4246, 0);
    ex.writeUInt16LE(extra, 2);
    const h = Buffer.alloc(30);
    h.writeUInt32LE(0x04034b50, 0);
    h.writeUInt16LE(n.length, 26);
    h.writeUInt16LE(ex.length, 28);
    h.writeUInt32LE(body.length, 18);
    h.writeUInt32LE(body.length, 22);
    const c = Buffer.alloc(46);
    c.writeUInt32LE(0x02014b50, 0);
    c.writeUInt32LE(body.length, 20);
    c.writeUInt32LE(body.length, 24);
    c.writeUInt16LE(n.length, 28);
    c.writeUInt32LE(at, 42);
    central.push(c, n);
    parts.push(h, n, ex, Buffer.from(body.buffer, body.byteOffset, body.byteLength));
    at += 30 + n.length + ex.length + body.length;
  }
  const cd = Buffer.concat(central);
  const e = Buffer.alloc(22);
  e.writeUInt32LE(0x06054b50, 0);
  e.writeUInt16LE(entries.length, 8);
  e.writeUInt16LE(entries.length, 10);
  e.writeUInt32LE(cd.length, 12);
  e.writeUInt32LE(at, 16);
  return Buffer.concat([...parts, cd, e]);
}

interface Chunk {
  key: string;
  offsets: number[];
  sizes: number[];
  file: string;
  offset: number;
  length: number;
}

export interface TorchDistLayout {
  /** Decoder layers stacked under `decoder.layers.` (default), or one key set per layer (`decoder.layers.{l}.`). */
  perLayer?: boolean;
  /** Prefix of every key (NeMo 2: `module.`). */
  prefix?: string;
  /** Where the checkpoint goes: a save folder with iter_0000001 (default), one whose tracker says release, or NeMo 2's weights/. */
  folder?: 'iter' | 'release' | 'nemo2';
}

/** Writes the bf16 HF checkpoint `from` (a Llama: shapes from its config.json) as a TP=2 torch_dist checkpoint in `to`. */
export async function writeTorchDist(from: string, to: string, layers: number, layout: TorchDistLayout = {}): Promise<void> {
  const c = JSON.parse(readFileSync(join(from, 'config.json'), 'utf8'));
  const H: number = c.hidden_size, I: number = c.intermediate_size, nh: number = c.num_attention_heads, ng: number = c.num_key_value_heads ?? nh, V: number = c.vocab_size;
  const hd: number = c.head_dim ?? H / nh;
  const hpg = nh / ng, TP = 2;
  const folder = layout.folder ?? 'iter';
  const dir = join(to, folder === 'iter' ? 'iter_0000001' : folder === 'release' ? 'release' : 'weights');
  rmSync(to, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  if (folder !== 'nemo2') writeFileSync(join(to, 'latest_checkpointed_iteration.txt'), folder === 'release' ? 'release' : '1');
  writeFileSync(join(dir, 'metadata.json'), JSON.stringify({ sharded_backend: 'torch_dist', sharded_backend_version: 1 }));
  const files = [0, 1].map((r) => ({ name: `__${r}_0.distcp`, fd: openSync(join(dir, `__${r}_0.distcp`), 'w'), at: 0 }));
  const chunks: Chunk[] = [];
  const shapes = new Map<string, number[]>();
  const put = (rank: number, stackedKey: string, stackedGlobal: number[], stackedOffsets: number[], stackedSizes: number[], data: Uint8Array) => {
    let key = stackedKey, global = stackedGlobal, offsets = stackedOffsets, sizes = stackedSizes;
    if (layout.perLayer && key.startsWith('decoder.layers.')) {
      // one key per layer: the layer's index in the name, no leading layer axis
      key = `decoder.layers.${offsets[0]}.${key.slice('decoder.layers.'.length)}`;
      global = global.slice(1);
      offsets = offsets.slice(1);
      sizes = sizes.slice(1);
    }
    key = (layout.prefix ?? '') + key;
    shapes.set(key, global);
    const item = torchSaveItem(data, sizes);
    const f = files[rank]!;
    writeSync(f.fd, item);
    chunks.push({ key, offsets, sizes, file: f.name, offset: f.at, length: item.length });
    f.at += item.length;
  };
  const ck = await openCheckpoint(from);
  const read = async (name: string) => Buffer.from(await ck.tensors.get(name)!.read());
  /** Columns [c0, c1) of a bf16 [rows, cols] matrix. */
  const cols = (m: Buffer, rows: number, n: number, c0: number, c1: number) => {
    const out = Buffer.alloc(rows * (c1 - c0) * 2);
    for (let r = 0; r < rows; r++) m.copy(out, r * (c1 - c0) * 2, (r * n + c0) * 2, (r * n + c1) * 2);
    return out;
  };
  try {
    const emb = await read('model.embed_tokens.weight');
    for (let r = 0; r < TP; r++) put(r, 'embedding.word_embeddings.weight', [V, H], [(r * V) / TP, 0], [V / TP, H], emb.subarray((r * V * H * 2) / TP, ((r + 1) * V * H * 2) / TP));
    const qkvRows = (nh + 2 * ng) * hd;
    for (let l = 0; l < layers; l++) {
      const p = `model.layers.${l}`;
      put(0, 'decoder.layers.self_attention.linear_qkv.layer_norm_weight', [layers, H], [l, 0], [1, H], await read(`${p}.input_layernorm.weight`));
      put(0, 'decoder.layers.mlp.linear_fc1.layer_norm_weight', [layers, H], [l, 0], [1, H], await read(`${p}.post_attention_layernorm.weight`));
      const q = await read(`${p}.self_attn.q_proj.weight`), k = await read(`${p}.self_attn.k_proj.weight`), v = await read(`${p}.self_attn.v_proj.weight`);
      const qkv = Buffer.alloc(qkvRows * H * 2);
      const row = H * 2;
      let o = 0;
      for (let g = 0; g < ng; g++) {
        q.copy(qkv, o, g * hpg * hd * row, (g + 1) * hpg * hd * row);
        o += hpg * hd * row;
        k.copy(qkv, o, g * hd * row, (g + 1) * hd * row);
        o += hd * row;
        v.copy(qkv, o, g * hd * row, (g + 1) * hd * row);
        o += hd * row;
      }
      for (let r = 0; r < TP; r++) put(r, 'decoder.layers.self_attention.linear_qkv.weight', [layers, qkvRows, H], [l, (r * qkvRows) / TP, 0], [1, qkvRows / TP, H], qkv.subarray((r * qkv.length) / TP, ((r + 1) * qkv.length) / TP));
      const oProj = await read(`${p}.self_attn.o_proj.weight`);
      for (let r = 0; r < TP; r++) put(r, 'decoder.layers.self_attention.linear_proj.weight', [layers, H, nh * hd], [l, 0, (r * nh * hd) / TP], [1, H, (nh * hd) / TP], cols(oProj, H, nh * hd, (r * nh * hd) / TP, ((r + 1) * nh * hd) / TP));
      const gate = await read(`${p}.mlp.gate_proj.weight`), up = await read(`${p}.mlp.up_proj.weight`);
      for (let r = 0; r < TP; r++) {
        const half = (I / TP) * H * 2;
        put(r, 'decoder.layers.mlp.linear_fc1.weight', [layers, 2 * I, H], [l, (r * I) / TP, 0], [1, I / TP, H], gate.subarray(r * half, (r + 1) * half));
        put(r, 'decoder.layers.mlp.linear_fc1.weight', [layers, 2 * I, H], [l, I + (r * I) / TP, 0], [1, I / TP, H], up.subarray(r * half, (r + 1) * half));
      }
      const down = await read(`${p}.mlp.down_proj.weight`);
      for (let r = 0; r < TP; r++) put(r, 'decoder.layers.mlp.linear_fc2.weight', [layers, H, I], [l, 0, (r * I) / TP], [1, H, I / TP], cols(down, H, I, (r * I) / TP, ((r + 1) * I) / TP));
    }
    put(0, 'decoder.final_layernorm.weight', [H], [0], [H], await read('model.norm.weight'));
    const out = await read('lm_head.weight');
    for (let r = 0; r < TP; r++) put(r, 'output_layer.weight', [V, H], [(r * V) / TP, 0], [V / TP, H], out.subarray((r * V * H * 2) / TP, ((r + 1) * V * H * 2) / TP));
  } finally {
    await ck.close();
    for (const f of files) closeSync(f.fd);
  }
  // .metadata: Metadata(state_dict_metadata, storage_data, planner_data=None, version)
  const p = new Pickler();
  p.object(MD, 'Metadata', () => {
    p.str('state_dict_metadata').emptyDict().mark();
    for (const [key, global] of shapes) {
      p.str(key).object(MD, 'TensorStorageMetadata', () => {
        p.str('properties').global(MD, 'TensorProperties').mark().tuple().op(0x81).mark().global('torch', 'bfloat16').str('torch.strided').bool(false).none().bool(false).tuple().op(0x62); // BUILD with a tuple, as TensorProperties.__setstate__ takes
        p.str('size').size(global);
        p.str('chunks').emptyList().mark();
        for (const c of chunks.filter((c) => c.key === key)) p.object(MD, 'ChunkStorageMetadata', () => p.str('offsets').size(c.offsets).str('sizes').size(c.sizes));
        p.appends();
      });
    }
    p.setItems();
    p.str('storage_data').emptyDict().mark();
    for (const c of chunks) {
      p.object(MD, 'MetadataIndex', () => p.str('fqn').str(c.key).str('offset').size(c.offsets).str('index').none());
      p.object('torch.distributed.checkpoint.filesystem', '_StorageInfo', () => p.str('relative_path').str(c.file).str('offset').int(c.offset).str('length').int(c.length));
    }
    p.setItems();
    p.str('planner_data').none().str('version').str('1.0.0');
  });
  writeFileSync(join(dir, '.metadata'), p.finish());
}

/** Whether two files hold the same bytes (read 64 MiB at a time: shards pass 2 GiB). */

export async function benchMegatron(dataDir: string, layers = 5, formats = ['fp8_pb_wo', 'nvfp4']): Promise<string[]> {
  const model = join(dataDir, `llama8b-${layers}`);
  const { stats } = await synthesize(model, layers);
  const mg = join(dataDir, `llama8b-${layers}-torch_dist`);
  if (!existsSync(join(mg, 'iter_0000001', '.metadata'))) await writeTorchDist(model, mg, layers);
  const rows = ['| input | format | s | peak RSS MiB |', '|---|---|---|---|'];
  const outA = join(dataDir, 'out-mg-st'), outB = join(dataDir, 'out-mg-dcp');
  let same = true;
  for (const format of formats) {
    evictDir(model, '.safetensors');
    const a = timeWithRss(`node ${join(ROOT, 'bin', 'rxquant.js')} quantize ${model} -f ${format} --stats ${stats} -o ${outA} --overwrite`);
    evictDir(join(mg, 'iter_0000001'), '.distcp');
    const b = timeWithRss(`node ${join(ROOT, 'bin', 'rxquant.js')} quantize ${mg} --hf-config ${model} -f ${format} --stats ${stats} -o ${outB} --overwrite`);
    for (const f of readdirSync(outA)) if (!sameFile(join(outA, f), join(outB, f))) same = false;
    rows.push(`| safetensors (${layers} layers, 8B shapes) | ${format} | ${a.seconds.toFixed(1)} | ${a.rssMiB.toFixed(0)} |`);
    rows.push(`| torch_dist, TP=2 (the same weights) | ${format} | ${b.seconds.toFixed(1)} | ${b.rssMiB.toFixed(0)} |`);
    rmSync(outA, { recursive: true, force: true });
    rmSync(outB, { recursive: true, force: true });
  }
  rows.push('', `outputs from the two inputs byte-identical: ${same ? 'yes' : 'NO'}; each run from a cold cache (the inputs' files evicted first)`);
  return rows;
}

/** sha256 of each file of a folder, by name (read 64 MiB at a time). */
function hashes(dir: string): Map<string, string> {
  const out = new Map<string, string>();
  const buf = Buffer.alloc(64 * 2 ** 20);
  for (const f of readdirSync(dir).sort()) {
    const h = createHash('sha256');
    const fd = openSync(join(dir, f), 'r');
    try {
      for (let at = 0; ; ) {
        const n = readSync(fd, buf, 0, buf.length, at);
        if (n === 0) break;
        h.update(buf.subarray(0, n));
        at += n;
      }
    } finally {
      closeSync(fd);
    }
    out.set(f, h.digest('hex'));
  }
  return out;
}

/**
 * The same comparison on a checkpoint larger than this machine's RAM (57 layers, ~26 GB each way),
 * within the disk: the safetensors export runs and is hashed first, then the checkpoint is rewritten
 * as torch_dist and its shards deleted (config.json and the statistics stay, as --hf-config), then
 * the torch_dist export runs and is hashed. Everything made here is removed at the end.
 */
export async function benchMegatronLarge(dataDir: string, layers = 57, format = 'fp8_pb_wo'): Promise<string[]> {
  const model = join(dataDir, `llama8b-${layers}`);
  const { stats } = await synthesize(model, layers);
  const mg = join(dataDir, `llama8b-${layers}-torch_dist`);
  const out = join(dataDir, 'out-mg-large');
  try {
    evictDir(model, '.safetensors');
    const a = timeWithRss(`node ${join(ROOT, 'bin', 'rxquant.js')} quantize ${model} -f ${format} --stats ${stats} -o ${out} --overwrite`);
    const ha = hashes(out);
    rmSync(out, { recursive: true, force: true });
    await writeTorchDist(model, mg, layers);
    for (const f of readdirSync(model)) if (f.startsWith('model') && (f.endsWith('.safetensors') || f.endsWith('.json') && f.includes('index'))) rmSync(join(model, f));
    evictDir(join(mg, 'iter_0000001'), '.distcp');
    const b = timeWithRss(`node ${join(ROOT, 'bin', 'rxquant.js')} quantize ${mg} --hf-config ${model} -f ${format} --stats ${stats} -o ${out} --overwrite`);
    const hb = hashes(out);
    const same = ha.size === hb.size && [...ha].every(([f, h]) => hb.get(f) === h);
    return [
      `input: Llama-3.1-8B shapes, ${layers} layers (larger than this machine's RAM); ${format}; each run from a cold cache`,
      '',
      '| input | s | peak RSS MiB |',
      '|---|---|---|',
      `| safetensors | ${a.seconds.toFixed(1)} | ${a.rssMiB.toFixed(0)} |`,
      `| torch_dist, TP=2 (the same weights) | ${b.seconds.toFixed(1)} | ${b.rssMiB.toFixed(0)} |`,
      '',
      `outputs byte-identical (sha256 of every file): ${same ? 'yes' : 'NO'}`,
    ];
  } finally {
    rmSync(out, { recursive: true, force: true });
    rmSync(mg, { recursive: true, force: true });
    rmSync(model, { recursive: true, force: true });
  }
}
