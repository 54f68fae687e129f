/**
 * A minimal ONNX ModelProto encoder (protobuf by hand: the handful of fields a MatMul graph needs),
 * so GEMMs can run in onnxruntime-node with the weight as a pre-packed initializer.
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

function tensorType(dims: (number | string)[]): Writer {
  const shape = new Writer();
  for (const d of dims) shape.msg(1, typeof d === 'number' ? new Writer().int(1, d) : new Writer().str(2, d));
  return new Writer().msg(1, new Writer().int(1, FLOAT).msg(2, shape));
}

function valueInfo(name: string, dims: (number | string)[]): Writer {
  return new Writer().str(1, name).msg(2, tensorType(dims));
}

/**
 * Y[T, N] = X[T, K] @ Wt[K, N] (+ B[N]): Wt is the transposed Linear weight, stored as an
 * initializer so onnxruntime pre-packs it once.
 */
export function matmulModel(wt: Float32Array, K: number, N: number, bias?: Float32Array): Uint8Array {
  const graph = new Writer();
  const mm = new Writer().str(1, 'X').str(1, 'Wt').str(2, bias ? 'XW' : 'Y').str(3, 'mm').str(4, 'MatMul');
  graph.msg(1, mm);
  if (bias) graph.msg(1, new Writer().str(1, 'XW').str(1, 'B').str(2, 'Y').str(3, 'add').str(4, 'Add'));
  graph.str(2, 'linear');
  const init = new Writer().int(1, K).int(1, N).int(2, FLOAT).str(8, 'Wt').bytes(9, new Uint8Array(wt.buffer, wt.byteOffset, wt.byteLength));
  graph.msg(5, init);
  if (bias) graph.msg(5, new Writer().int(1, N).int(2, FLOAT).str(8, 'B').bytes(9, new Uint8Array(bias.buffer, bias.byteOffset, bias.byteLength)));
  graph.msg(11, valueInfo('X', ['T', K]));
  graph.msg(12, valueInfo('Y', ['T', N]));
  return new Writer().int(1, 8).str(2, 'rxquant').msg(7, graph).msg(8, new Writer().str(1, '').int(2, 17)).finish();
}
