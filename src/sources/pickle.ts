/**
 * A symbolic unpickler (Python pickle protocols 2-5) for the pickles of PyTorch checkpoints: a
 * torch.distributed.checkpoint `.metadata`, the `data.pkl` of each torch.save item and `common.pt`
 * (spec megatron.md §4). It never executes anything: a GLOBAL is a name `{module, name}`, REDUCE and
 * NEWOBJ build `{cls, args}` objects, BUILD attaches their state. Only the few constructors these
 * files rely on are interpreted (torch.Size and OrderedDict as their argument, the layout helper as
 * its string, `_codecs.encode` as bytes, the tensor rebuilders as tensor references). Dicts are
 * `Map`s, because torch's dict keys can be objects (MetadataIndex). Any opcode outside the ~48 these
 * files use is an error naming it and its offset.
 */

export interface PyGlobal {
  kind: 'global';
  module: string;
  name: string;
}

export interface PyObject {
  kind: 'object';
  cls: PyGlobal;
  args: PyValue[];
  /** BUILD's state: a dict (dataclasses, Namespace) or a tuple (TensorProperties), when there was one. */
  state?: PyValue;
}

/** A `torch._utils._rebuild_tensor_v2/v3` call: where a tensor's storage is and how it is viewed. */
export interface PyTensor {
  kind: 'tensor';
  /** What persistent_load gave for the storage (for torch.save: the storage's key and dtype). */
  storage: PyValue;
  storageOffset: number;
  size: number[];
  stride: number[];
  /** v3 names the dtype itself. */
  dtype?: string;
}

export type PyValue =
  | null
  | boolean
  | number
  | bigint
  | string
  | Uint8Array
  | PyValue[]
  | Map<PyValue, PyValue>
  | PyGlobal
  | PyObject
  | PyTensor
  | { kind: 'persistent'; id: PyValue }
  | { kind: 'set'; items: PyValue[] };

export class PickleError extends Error {}

const MARK = Symbol('mark');
type Slot = PyValue | typeof MARK;

/** Reads the attribute `name` of an object built with BUILD(dict), or of a plain dict. */
export function attr(o: PyValue, name: string): PyValue | undefined {
  if (o instanceof Map) return o.get(name);
  if (o && typeof o === 'object' && 'kind' in o && o.kind === 'object' && o.state instanceof Map) return o.state.get(name);
  return undefined;
}

/** `module.name` of an object's class (or of a global), for matching. */
export function className(o: PyValue | undefined): string | undefined {
  if (o && typeof o === 'object' && 'kind' in o) {
    if (o.kind === 'object') return `${o.cls.module}.${o.cls.name}`;
    if (o.kind === 'global') return `${o.module}.${o.name}`;
  }
  return undefined;
}

const isGlobal = (v: PyValue | undefined, module: string, name: string) =>
  !!v && typeof v === 'object' && 'kind' in v && v.kind === 'global' && v.module === module && v.name === name;

function asInt(v: PyValue, what: string): number {
  if (typeof v === 'number' && Number.isInteger(v)) return v;
  if (typeof v === 'bigint' && v <= BigInt(Number.MAX_SAFE_INTEGER) && v >= -BigInt(Number.MAX_SAFE_INTEGER)) return Number(v);
  throw new PickleError(`${what}: expected an integer, got ${describe(v)}`);
}

function asInts(v: PyValue, what: string): number[] {
  if (!Array.isArray(v)) throw new PickleError(`${what}: expected a tuple of integers, got ${describe(v)}`);
  return v.map((x, i) => asInt(x, `${what}[${i}]`));
}

function describe(v: PyValue | undefined): string {
  if (v === undefined) return 'nothing';
  if (v === null) return 'None';
  if (Array.isArray(v)) return `a tuple/list of ${v.length}`;
  if (v instanceof Map) return 'a dict';
  if (v instanceof Uint8Array) return `${v.length} bytes`;
  if (typeof v === 'object') return className(v) ?? v.kind;
  return JSON.stringify(typeof v === 'bigint' ? v.toString() : v);
}

/** What REDUCE(callable, args) gives: the interpreted constructors, else a symbolic object. */
function reduce(f: PyValue, args: PyValue[]): PyValue {
  if (!f || typeof f !== 'object' || !('kind' in f) || f.kind !== 'global') throw new PickleError(`REDUCE of ${describe(f)}, not a global`);
  const g = `${f.module}.${f.name}`;
  switch (g) {
    case 'torch.Size':
      return (args[0] as PyValue[]) ?? [];
    case 'collections.OrderedDict':
      return args.length && Array.isArray(args[0]) ? new Map((args[0] as PyValue[][]).map((kv) => [kv[0]!, kv[1]!])) : new Map();
    case 'torch.serialization._get_layout':
      return args[0] as string;
    case '_codecs.encode': {
      // how protocol 2 pickles bytes: the latin-1 text of them
      const s = args[0] as string;
      return Uint8Array.from(s, (c) => c.charCodeAt(0) & 0xff);
    }
    case '__builtin__.set':
    case 'builtins.set':
    case '__builtin__.frozenset':
    case 'builtins.frozenset':
      return { kind: 'set', items: (args[0] as PyValue[]) ?? [] };
    case 'torch._utils._rebuild_tensor_v2':
    case 'torch._utils._rebuild_tensor_v3':
      return {
        kind: 'tensor',
        storage: args[0]!,
        storageOffset: asInt(args[1]!, `${g} storage_offset`),
        size: asInts(args[2]!, `${g} size`),
        stride: asInts(args[3]!, `${g} stride`),
        ...(g.endsWith('v3') && args[6] && typeof args[6] === 'object' && 'kind' in args[6] && args[6].kind === 'global' ? { dtype: args[6].name } : {}),
      };
    case 'torch._utils._rebuild_parameter':
      return args[0]!;
    case 'pathlib.PosixPath':
    case 'pathlib.Path':
      return (args as string[]).join('/');
    default:
      return { kind: 'object', cls: f, args };
  }
}

/**
 * Unpickles `bytes`. `persistentLoad` receives BINPERSID's id (torch.save: a tuple
 * ('storage', StorageClass, key, location, numel)) and returns what stands for it.
 */
export function unpickle(bytes: Uint8Array, persistentLoad: (id: PyValue) => PyValue = (id) => ({ kind: 'persistent', id }), what = 'pickle'): PyValue {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const text = new TextDecoder('utf-8', { fatal: true });
  const stack: Slot[] = [];
  const memo = new Map<number, PyValue>();
  let p = 0;
  const fail = (msg: string): never => {
    throw new PickleError(`${what}: ${msg} (at byte ${p})`);
  };
  const need = (n: number) => {
    if (p + n > bytes.length) fail(`truncated: ${n} more bytes needed`);
  };
  const u8 = () => (need(1), bytes[p++]!);
  const u16 = () => (need(2), (p += 2), dv.getUint16(p - 2, true));
  const u32 = () => (need(4), (p += 4), dv.getUint32(p - 4, true));
  const i32 = () => (need(4), (p += 4), dv.getInt32(p - 4, true));
  const u64 = () => {
    need(8);
    const v = dv.getBigUint64(p, true);
    p += 8;
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) fail(`a length of ${v} bytes`);
    return Number(v);
  };
  const take = (n: number) => {
    need(n);
    p += n;
    return bytes.subarray(p - n, p);
  };
  const str = (n: number) => text.decode(take(n));
  const line = () => {
    const end = bytes.indexOf(0x0a, p);
    if (end < 0) fail('a GLOBAL line without its newline');
    const s = new TextDecoder('latin1').decode(bytes.subarray(p, end));
    p = end + 1;
    return s;
  };
  const pop = (): PyValue => {
    const v = stack.pop();
    if (v === undefined || v === MARK) fail('stack underflow');
    return v as PyValue;
  };
  const top = (): PyValue => {
    const v = stack[stack.length - 1];
    if (v === undefined || v === MARK) fail('stack underflow');
    return v as PyValue;
  };
  const popMark = (): PyValue[] => {
    const i = stack.lastIndexOf(MARK);
    if (i < 0) fail('no MARK on the stack');
    const items = stack.splice(i) as PyValue[];
    items.shift();
    return items;
  };
  const long = (b: Uint8Array): number | bigint => {
    // little-endian two's complement
    let v = 0n;
    for (let i = b.length - 1; i >= 0; i--) v = (v << 8n) | BigInt(b[i]!);
    if (b.length > 0 && b[b.length - 1]! & 0x80) v -= 1n << BigInt(8 * b.length);
    return v >= -BigInt(Number.MAX_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
  };
  const setItems = (d: PyValue, items: PyValue[]) => {
    if (!(d instanceof Map)) fail(`SETITEM(S) on ${describe(d)}`);
    for (let i = 0; i + 1 < items.length; i += 2) (d as Map<PyValue, PyValue>).set(items[i]!, items[i + 1]!);
  };
  const appendTo = (l: PyValue, items: PyValue[]) => {
    if (Array.isArray(l)) l.push(...items);
    else if (l && typeof l === 'object' && 'kind' in l && l.kind === 'set') l.items.push(...items);
    else fail(`APPEND(S) on ${describe(l)}`);
  };

  for (;;) {
    const at = p;
    const op = u8();
    switch (op) {
      case 0x80: // PROTO
        if (u8() > 5) fail('pickle protocol above 5');
        break;
      case 0x95: // FRAME (advisory)
        u64();
        break;
      case 0x2e: // STOP
        if (stack.length !== 1) fail(`STOP with ${stack.length} items on the stack`);
        return pop();
      case 0x28: // MARK
        stack.push(MARK);
        break;
      case 0x30: // POP
        stack.pop();
        break;
      case 0x31: // POP_MARK
        popMark();
        break;
      case 0x32: // DUP
        stack.push(top());
        break;
      case 0x4e: // NONE
        stack.push(null);
        break;
      case 0x88: // NEWTRUE
        stack.push(true);
        break;
      case 0x89: // NEWFALSE
        stack.push(false);
        break;
      case 0x4a: // BININT
        stack.push(i32());
        break;
      case 0x4b: // BININT1
        stack.push(u8());
        break;
      case 0x4d: // BININT2
        stack.push(u16());
        break;
      case 0x8a: // LONG1
        stack.push(long(take(u8())));
        break;
      case 0x8b: // LONG4
        stack.push(long(take(u32())));
        break;
      case 0x47: // BINFLOAT (big-endian)
        need(8);
        stack.push(dv.getFloat64(p, false));
        p += 8;
        break;
      case 0x8c: // SHORT_BINUNICODE
        stack.push(str(u8()));
        break;
      case 0x58: // BINUNICODE
        stack.push(str(u32()));
        break;
      case 0x8d: // BINUNICODE8
        stack.push(str(u64()));
        break;
      case 0x43: // SHORT_BINBYTES
        stack.push(take(u8()).slice());
        break;
      case 0x42: // BINBYTES
        stack.push(take(u32()).slice());
        break;
      case 0x8e: // BINBYTES8
        stack.push(take(u64()).slice());
        break;
      case 0x96: // BYTEARRAY8
        stack.push(take(u64()).slice());
        break;
      case 0x29: // EMPTY_TUPLE
        stack.push([]);
        break;
      case 0x85: // TUPLE1
        stack.push([pop()]);
        break;
      case 0x86: {
        // TUPLE2
        const b = pop(), a = pop();
        stack.push([a, b]);
        break;
      }
      case 0x87: {
        // TUPLE3
        const c = pop(), b = pop(), a = pop();
        stack.push([a, b, c]);
        break;
      }
      case 0x74: // TUPLE
        stack.push(popMark());
        break;
      case 0x5d: // EMPTY_LIST
        stack.push([]);
        break;
      case 0x6c: // LIST
        stack.push(popMark());
        break;
      case 0x61: {
        // APPEND
        const v = pop();
        appendTo(top(), [v]);
        break;
      }
      case 0x65: {
        // APPENDS
        const items = popMark();
        appendTo(top(), items);
        break;
      }
      case 0x7d: // EMPTY_DICT
        stack.push(new Map());
        break;
      case 0x64: {
        // DICT
        const items = popMark();
        const d = new Map<PyValue, PyValue>();
        setItems(d, items);
        stack.push(d);
        break;
      }
      case 0x73: {
        // SETITEM
        const v = pop(), k = pop();
        setItems(top(), [k, v]);
        break;
      }
      case 0x75: {
        // SETITEMS
        const items = popMark();
        setItems(top(), items);
        break;
      }
      case 0x8f: // EMPTY_SET
        stack.push({ kind: 'set', items: [] });
        break;
      case 0x90: {
        // ADDITEMS
        const items = popMark();
        appendTo(top(), items);
        break;
      }
      case 0x91: // FROZENSET
        stack.push({ kind: 'set', items: popMark() });
        break;
      case 0x63: {
        // GLOBAL "module\nname\n"
        const module = line(), name = line();
        stack.push({ kind: 'global', module, name });
        break;
      }
      case 0x93: {
        // STACK_GLOBAL
        const name = pop(), module = pop();
        if (typeof module !== 'string' || typeof name !== 'string') fail('STACK_GLOBAL of non-strings');
        stack.push({ kind: 'global', module: module as string, name: name as string });
        break;
      }
      case 0x52: {
        // REDUCE
        const args = pop(), f = pop();
        if (!Array.isArray(args)) fail(`REDUCE with ${describe(args)} as arguments`);
        stack.push(reduce(f, args as PyValue[]));
        break;
      }
      case 0x81: {
        // NEWOBJ
        const args = pop(), cls = pop();
        if (!cls || typeof cls !== 'object' || !('kind' in cls) || cls.kind !== 'global') fail(`NEWOBJ of ${describe(cls)}`);
        stack.push({ kind: 'object', cls: cls as PyGlobal, args: Array.isArray(args) ? args : [] });
        break;
      }
      case 0x92: {
        // NEWOBJ_EX
        pop(); // kwargs
        const args = pop(), cls = pop();
        if (!cls || typeof cls !== 'object' || !('kind' in cls) || cls.kind !== 'global') fail(`NEWOBJ_EX of ${describe(cls)}`);
        stack.push({ kind: 'object', cls: cls as PyGlobal, args: Array.isArray(args) ? args : [] });
        break;
      }
      case 0x62: {
        // BUILD
        const state = pop();
        const o = top();
        if (o instanceof Map && state instanceof Map) for (const [k, v] of state) o.set(k, v);
        else if (o && typeof o === 'object' && 'kind' in o && o.kind === 'object') o.state = state;
        else if (isGlobal(o, 'argparse', 'Namespace')) fail('BUILD on a class');
        // other targets (a tensor's backward-hook dict) carry nothing rxquant reads
        break;
      }
      case 0x51: // BINPERSID
        stack.push(persistentLoad(pop()));
        break;
      case 0x94: // MEMOIZE
        memo.set(memo.size, top());
        break;
      case 0x71: // BINPUT
        memo.set(u8(), top());
        break;
      case 0x72: // LONG_BINPUT
        memo.set(u32(), top());
        break;
      case 0x68: {
        // BINGET
        const i = u8();
        if (!memo.has(i)) fail(`BINGET of memo ${i}, never stored`);
        stack.push(memo.get(i)!);
        break;
      }
      case 0x6a: {
        // LONG_BINGET
        const i = u32();
        if (!memo.has(i)) fail(`LONG_BINGET of memo ${i}, never stored`);
        stack.push(memo.get(i)!);
        break;
      }
      default:
        p = at;
        fail(`unsupported opcode 0x${op.toString(16).padStart(2, '0')}`);
    }
  }
}
