/**
 * GEMM engines for the forward pass. `js` is the blocked plain-JavaScript matmul (the reference the
 * others are tested against); `onnx` runs each linear as a one-node onnxruntime session over the
 * weight transposed to [K, N], held once in f32 and passed as an input at each run.
 */
import { matmul } from './ops.js';
import { attentionModel, matmulModel } from './onnx.js';
import { ReusedBuffers } from './reused.js';

/** One linear's weights as the forward pass takes them: W [N, K] in f32 (or a loader of W^T), bias, input transform. */
export interface LinearWeights {
  w: Float32Array;
  N: number;
  K: number;
  /**
   * Instead of `w` (then empty): writes W^T into columns [off, off + N) of wt [K, nTotal], reading
   * the source a chunk of rows at a time, so no [N, K] copy ever exists (engines working on W^T).
   */
  writeTransposed?: (wt: Float32Array, nTotal: number, off: number) => Promise<void>;
  b?: Float32Array;
  /** Applied to the input before the matmul: pre_quant_scale and activation fake-quantization of an export. */
  input?: (x: Float32Array, T: number) => Float32Array;
}

export interface PreparedLinear {
  /**
   * y [T, N] = input(x) [T, K] W^T + b. The array may be the one the previous run returned (an
   * engine reuses its output buffer rather than leave ~100 MB of garbage per sample at 8B): read it
   * before the next run.
   */
  run(x: Float32Array, T: number): Promise<Float32Array>;
  release(): Promise<void>;
}

/** A linear given by its weight already transposed: wt [K, N] (column n of W^T is row n of W). */
export interface TransposedLinear {
  wt: Float32Array;
  N: number;
  K: number;
  b?: Float32Array;
  input?: (x: Float32Array, T: number) => Float32Array;
}

export interface GemmEngine {
  name: string;
  prepare(l: LinearWeights): Promise<PreparedLinear>;
  /**
   * Engines that work on W^T take it directly (the fused q|k|v and gate|up are transposed straight
   * from their members, with no concatenated copy); prepare() is then prepareTransposed(transpose(l)),
   * and the caller may drop its [N, K] arrays once prepared.
   */
  prepareTransposed?(l: TransposedLinear): Promise<PreparedLinear>;
  /**
   * A [n] buffer, one a released linear gave back when there is one of that length: a W^T for
   * prepareTransposed (which then owns it) or a group's outputs. Layers of one model share shapes,
   * so each layer is written into the previous one's buffers, whenever the garbage collector comes.
   */
  takeBuffer?(n: number): Float32Array;
  /** Buffers for takeBuffer to hand out again (a released group's outputs). */
  giveBack?(...buffers: Float32Array[]): void;
  /** Lets go of the buffers kept for reuse (after the last layer). */
  dropSpareBuffers?(): void;
  /** Causal GQA attention for T tokens, if the engine has it (else the JavaScript one is used); its output may be reused as a run's is. */
  attention?(T: number, nH: number, nKV: number, d: number): Promise<(q: Float32Array, k: Float32Array, v: Float32Array) => Promise<Float32Array>>;
}

export const jsGemm: GemmEngine = {
  name: 'js',
  async prepare(l) {
    return {
      run: async (x, T) => matmul(l.input ? l.input(x, T) : x, T, l.K, l.w, l.N, l.b),
      release: async () => undefined,
    };
  },
};

type Ort = typeof import('onnxruntime-node');
let ortModule: Promise<Ort | undefined> | undefined;

/** onnxruntime-node if it can be loaded on this machine, else undefined. */
export function loadOrt(): Promise<Ort | undefined> {
  ortModule ??= import('onnxruntime-node').then(
    (m) => m as Ort,
    () => undefined,
  );
  return ortModule;
}

export function onnxGemm(ort: Ort, threads: number): GemmEngine {
  const attention = new Map<string, Promise<import('onnxruntime-node').InferenceSession>>();
  const attentionBuffers = new Map<string, ReusedBuffers<Record<'y' | 'qj' | 'kj' | 'vj' | 'yj', Float32Array>>>();
  // onnxruntime's CPU arena keeps a session's peak buffers for as long as the session lives; without
  // it calibration measured 23% slower. The GEMM sessions live one layer and their outputs go to
  // buffers of ours. The attention session lives the whole run and runs one KV head (and its query
  // heads) at a time, so what its arena keeps is one head group's scores (4 x 4 MiB at 8B and 512
  // tokens) instead of all eight groups' (4 x 32 MiB). Measured at 8B shapes, 512 tokens: same
  // output bits, 32-37 ms against 35-73 ms for all heads in one run; without an arena 264 ms.
  const options = { intraOpNumThreads: threads, interOpNumThreads: 1, graphOptimizationLevel: 'all' as const };
  // W^T and output buffers of released linears, by length (see takeBuffer): left to the garbage
  // collector, the previous layer's measured still half there as the next one loaded
  const spare = new Map<number, Float32Array[]>();
  const takeBuffer = (n: number) => spare.get(n)?.pop() ?? new Float32Array(n);
  const giveBack = (...buffers: Float32Array[]) => {
    for (const b of buffers) spare.get(b.length)?.push(b) ?? spare.set(b.length, [b]);
  };
  return {
    takeBuffer,
    giveBack,
    dropSpareBuffers: () => spare.clear(),
    name: `onnxruntime (${threads} thread${threads > 1 ? 's' : ''})`,
    async attention(T, nH, nKV, d) {
      const g = nH / nKV; // query heads per KV head
      const key = `${T},${g},${d}`;
      let session = attention.get(key);
      if (!session) {
        session = ort.InferenceSession.create(attentionModel(T, g, 1, d), options);
        attention.set(key, session);
      }
      const s = await session;
      // [T, nH*d] output; one head group's q, k, v and output
      const shape = `${T},${nH},${nKV},${d}`;
      if (!attentionBuffers.has(shape)) {
        attentionBuffers.set(shape, new ReusedBuffers(() => ({ y: new Float32Array(T * nH * d), qj: new Float32Array(T * g * d), kj: new Float32Array(T * d), vj: new Float32Array(T * d), yj: new Float32Array(T * g * d) })));
      }
      const reuse = attentionBuffers.get(shape)!;
      return (q, k, v) =>
        reuse.use('', async ({ y, qj, kj, vj, yj }) => {
          // KV head j and its query heads j*g .. j*g+g-1: contiguous columns of q and y
          for (let j = 0; j < nKV; j++) {
            for (let t = 0; t < T; t++) {
              qj.set(q.subarray((t * nH + j * g) * d, (t * nH + j * g + g) * d), t * g * d);
              kj.set(k.subarray((t * nKV + j) * d, (t * nKV + j + 1) * d), t * d);
              vj.set(v.subarray((t * nKV + j) * d, (t * nKV + j + 1) * d), t * d);
            }
            await s.run(
              {
                Q: new ort.Tensor('float32', qj, [T, g * d]),
                K: new ort.Tensor('float32', kj, [T, d]),
                V: new ort.Tensor('float32', vj, [T, d]),
              },
              { Y: new ort.Tensor('float32', yj, [T, g * d]) },
            );
            for (let t = 0; t < T; t++) y.set(yj.subarray(t * g * d, (t + 1) * g * d), (t * nH + j * g) * d);
          }
          return y;
        });
    },
    async prepare(l) {
      const wt = takeBuffer(l.K * l.N);
      if (l.writeTransposed) await l.writeTransposed(wt, l.N, 0);
      else transposeInto(wt, l.N, 0, l);
      return this.prepareTransposed!({ wt, N: l.N, K: l.K, b: l.b, input: l.input });
    },
    async prepareTransposed({ wt, N, K, b, input }) {
      const session = await ort.InferenceSession.create(matmulModel(K, N, b), options);
      const w = new ort.Tensor('float32', wt, [K, N]);
      // the output in a buffer of ours, reused from run to run: left to onnxruntime, it would come
      // from the session's arena, which keeps its peak (58 MB for gate|up at 8B) until the session
      // is released
      const output = new ReusedBuffers((key) => takeBuffer(Number(key) * N));
      return {
        run: (x, T) =>
          output.use(String(T), async (y) => {
            const xin = input ? input(x, T) : x;
            await session.run({ X: new ort.Tensor('float32', xin, [T, K]), Wt: w }, { Y: new ort.Tensor('float32', y, [T, N]) });
            return y;
          }),
        release: async () => {
          await session.release();
          const y = output.takeBack();
          giveBack(wt, ...(y ? [y] : []));
        },
      };
    },
  };
}

/**
 * Writes rows [rows, K] transposed into columns [off, off + rows) of wt [K, N], as f32 bits: `src`
 * holds f32 bits (shift 0) or bf16 bits (shift 16: a bf16 is the top half of an f32, so no f32 copy
 * of the rows is made; at 8B, a layer's load otherwise leaves 2.5 GB of such copies to the garbage
 * collector, 12 MB at a time). Blocks of 64 rows: the writes of one row go N apart, the block keeps
 * them in nearby lines.
 */
function transposeBits(wt: Float32Array, N: number, off: number, src: Uint32Array | Uint16Array, rows: number, K: number, shift: 0 | 16): Float32Array {
  const out = new Uint32Array(wt.buffer, wt.byteOffset, wt.length);
  for (let n0 = 0; n0 < rows; n0 += 64) {
    const n1 = Math.min(rows, n0 + 64);
    for (let k = 0; k < K; k++) {
      const base = k * N + off;
      for (let n = n0; n < n1; n++) out[base + n] = src[n * K + k]! << shift;
    }
  }
  return wt;
}

/** As transposeInto, for rows given as bf16 bits [rows, K]. */
export function transposeBf16Into(wt: Float32Array, N: number, off: number, bits: Uint16Array, rows: number, K: number): Float32Array {
  return transposeBits(wt, N, off, bits, rows, K, 16);
}

/** Writes W [l.N, l.K] transposed into columns [off, off + l.N) of wt [K, N]; returns wt. */
export function transposeInto(wt: Float32Array, N: number, off: number, l: { w: Float32Array; N: number; K: number }): Float32Array {
  return transposeBits(wt, N, off, new Uint32Array(l.w.buffer, l.w.byteOffset, l.w.length), l.N, l.K, 0);
}

/** The fastest engine available: onnxruntime when it loads, else plain JavaScript. */
export async function defaultGemm(threads: number): Promise<GemmEngine> {
  const ort = await loadOrt();
  return ort ? onnxGemm(ort, threads) : jsGemm;
}
