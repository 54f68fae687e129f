/**
 * A minimal ONNX ModelProto encoder (protobuf by hand: the handful of fields a MatMul graph needs),
 * so GEMMs and attention can run in onnxruntime-node.
 */

class Writer {
  private parts: Uint8Array[] = [];
  private size = 0;
  private push(b: Uint8Array) {
    this.parts.push(b);
    this.size += b.length;
  }
  private varint(v: number | bigint) {
    let x = BigInt(v);
    if (x < 0n) x += 1n << 64n; // int64 fields: two's complement, ten bytes
    const out: number[] = [];
    do {
      let byte = Number(x & 0x7fn);
      x >>= 7n;
      if (x > 0n) byte |= 0x80;
      out.push(byte);
    } while (x > 0n);
    this.push(Uint8Array.from(out));
  }
  int(field: number, v: number) {
    this.varint((field << 3) | 0);
    this.varint(v);
    return this;
  }
  bytes(field: number, b: Uint8Array) {
    this.varint((field << 3) | 2);
    this.varint(b.length);
    this.push(b);
    return this;
  }
  str(field: number, s: string) {
    return this.bytes(field, new TextEncoder().encode(s));
  }
  msg(field: number, w: Writer) {
    return this.bytes(field, w.finish());
  }
  /** A 32-bit float field (wire type 5). */
  f32(field: number, v: number) {
    this.varint((field << 3) | 5);
    const b = new Uint8Array(4);
    new DataView(b.buffer).setFloat32(0, v, true);
    this.push(b);
    return this;
  }
  finish(): Uint8Array {
    const out = new Uint8Array(this.size);
    let o = 0;
    for (const p of this.parts) {
      out.set(p, o);
      o += p.length;
    }
    return out;
  }
}

const FLOAT = 1;
const INT64 = 7;

function node(op: string, inputs: string[], output: string, attrs: Writer[] = []): Writer {
  const n = new Writer();
  for (const i of inputs) n.str(1, i);
  n.str(2, output).str(3, output).str(4, op);
  for (const a of attrs) n.msg(5, a);
  return n;
}

const intsAttr = (name: string, v: number[]) => {
  const a = new Writer().str(1, name);
  for (const x of v) a.int(8, x);
  return a.int(20, 7); // INTS
};
const intAttr = (name: string, v: number) => new Writer().str(1, name).int(3, v).int(20, 2); // INT

function int64Tensor(name: string, v: number[]): Writer {
  const raw = new Uint8Array(8 * v.length);
  const dv = new DataView(raw.buffer);
  v.forEach((x, i) => dv.setBigInt64(8 * i, BigInt(x), true));
  return new Writer().int(1, v.length).int(2, INT64).str(8, name).bytes(9, raw);
}

function floatTensor(name: string, dims: number[], data: Float32Array): Writer {
  const t = new Writer();
  for (const d of dims) t.int(1, d);
  return t.int(2, FLOAT).str(8, name).bytes(9, new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
}

/**
 * Causal grouped-query attention for T tokens, as transformers' eager path computes it:
 * softmax(q k^T * d^-0.5 + mask) v, the mask adding f32-min above the diagonal. Query heads are
 * grouped under their KV head (head h reads KV head h / group, like repeat_kv).
 * Q [T, nH*d], K and V [T, nKV*d] -> Y [T, nH*d]
 */
export function attentionModel(T: number, nH: number, nKV: number, d: number): Uint8Array {
  const g = nH / nKV;
  const mask = new Float32Array(g * T * T);
  for (let r = 0; r < g * T; r++) {
    const t = r % T;
    for (let j = t + 1; j < T; j++) mask[r * T + j] = -3.4028234663852886e38;
  }
  const graph = new Writer();
  const nodes = [
    node('Reshape', ['Q', 'shape_q4'], 'q4'),
    node('Transpose', ['q4'], 'q4t', [intsAttr('perm', [1, 2, 0, 3])]),
    node('Reshape', ['q4t', 'shape_q3'], 'q3'),
    node('Reshape', ['K', 'shape_kv3'], 'k3'),
    node('Transpose', ['k3'], 'kt', [intsAttr('perm', [1, 2, 0])]),
    node('Reshape', ['V', 'shape_kv3'], 'v3'),
    node('Transpose', ['v3'], 'vt', [intsAttr('perm', [1, 0, 2])]),
    node('MatMul', ['q3', 'kt'], 's'),
    node('Mul', ['s', 'scale'], 'ss'),
    node('Add', ['ss', 'mask'], 'sm'),
    node('Softmax', ['sm'], 'p', [intAttr('axis', -1)]),
    node('MatMul', ['p', 'vt'], 'o3'),
    node('Reshape', ['o3', 'shape_o4'], 'o4'),
    node('Transpose', ['o4'], 'o4t', [intsAttr('perm', [2, 0, 1, 3])]),
    node('Reshape', ['o4t', 'shape_y'], 'Y'),
  ];
  for (const n of nodes) graph.msg(1, n);
  graph.str(2, 'attention');
  graph.msg(5, int64Tensor('shape_q4', [T, nKV, g, d]));
  graph.msg(5, int64Tensor('shape_q3', [nKV, g * T, d]));
  graph.msg(5, int64Tensor('shape_kv3', [T, nKV, d]));
  graph.msg(5, int64Tensor('shape_o4', [nKV, g, T, d]));
  graph.msg(5, int64Tensor('shape_y', [T, nH * d]));
  graph.msg(5, floatTensor('scale', [1], Float32Array.of(1 / Math.sqrt(d))));
  graph.msg(5, floatTensor('mask', [g * T, T], mask));
  graph.msg(11, valueInfo('Q', [T, nH * d]));
  graph.msg(11, valueInfo('K', [T, nKV * d]));
  graph.msg(11, valueInfo('V', [T, nKV * d]));
  graph.msg(12, valueInfo('Y', [T, nH * d]));
  return new Writer().int(1, 8).str(2, 'rxquant').msg(7, graph).msg(8, new Writer().str(1, '').int(2, 17)).finish();
}

function tensorType(dims: (number | string)[]): Writer {
  const shape = new Writer();
  for (const d of dims) shape.msg(1, typeof d === 'number' ? new Writer().int(1, d) : new Writer().str(2, d));
  return new Writer().msg(1, new Writer().int(1, FLOAT).msg(2, shape));
}

function valueInfo(name: string, dims: (number | string)[]): Writer {
  return new Writer().str(1, name).msg(2, tensorType(dims));
}

const transB = new Writer().str(1, 'transB').int(3, 1).int(20, 2); // INT attribute transB = 1

const gemm = (a: string, w: string, y: string) => node('Gemm', [a, w], y, [transB]);

/** A ModelProto around `graph` (ONNX opset 17). */
function model(graph: Writer): Uint8Array {
  return new Writer().int(1, 8).str(2, 'rxquant').msg(7, graph).msg(8, new Writer().str(1, '').int(2, 17)).finish();
}

/**
 * Y[T, N] = X[T, K] W[N, K]^T (+ B[N]): one Gemm with transB over the Linear weight as stored, a
 * graph input. Not an initializer: that would be copied into the model bytes and again into
 * onnxruntime (three copies of a 235 MB gate at 8B); an input is read in place from the caller's
 * buffer at each run (MLAS packs it panel by panel as it multiplies). The bias is a separate Add,
 * after the product is complete, as torch's linear rounds it.
 */
export function linearModel(K: number, N: number, bias?: Float32Array): Uint8Array {
  const graph = new Writer();
  graph.msg(1, gemm('X', 'W', bias ? 'XW' : 'Y'));
  if (bias) graph.msg(1, node('Add', ['XW', 'B'], 'Y'));
  graph.str(2, 'linear');
  if (bias) graph.msg(5, floatTensor('B', [N], bias));
  graph.msg(11, valueInfo('X', ['T', K]));
  graph.msg(11, valueInfo('W', [N, K]));
  graph.msg(12, valueInfo('Y', ['T', N]));
  return model(graph);
}

/**
 * The first half of a SwiGLU MLP: G = X Wg^T and U = X Wu^T ([T, I] each), then (outputs 'act')
 * A = (G * sigmoid(G)) * U, transformers' act_fn(gate_proj(x)) * up_proj(x) with SiLU, or
 * (outputs 'apart') G and U themselves. Wg, Wu [I, K] are graph inputs, as in linearModel.
 */
export function swiGluModel(K: number, I: number, outputs: 'act' | 'apart'): Uint8Array {
  const graph = new Writer();
  graph.msg(1, gemm('X', 'Wg', 'G'));
  graph.msg(1, gemm('X', 'Wu', 'U'));
  if (outputs === 'act') {
    // (onnxruntime's QuickGelu with alpha 1 is the same SiLU in one op: measured no faster at 8B shapes)
    graph.msg(1, node('Sigmoid', ['G'], 'S'));
    graph.msg(1, node('Mul', ['G', 'S'], 'GS'));
    graph.msg(1, node('Mul', ['GS', 'U'], 'A'));
  }
  graph.str(2, 'swiglu');
  graph.msg(11, valueInfo('X', ['T', K]));
  graph.msg(11, valueInfo('Wg', [I, K]));
  graph.msg(11, valueInfo('Wu', [I, K]));
  for (const y of outputs === 'act' ? ['A'] : ['G', 'U']) graph.msg(12, valueInfo(y, ['T', I]));
  return model(graph);
}
