/**
 * GEMM engines for the forward pass. `js` is the blocked plain-JavaScript matmul (the reference the
 * others are tested against); `onnx` runs each linear as a one-node onnxruntime session over the
 * weight transposed to [K, N], held once in f32 and passed as an input at each run.
 */
import { matmul } from './ops.js';
import { attentionModel, matmulModel } from './onnx.js';
import type { LinearWeights } from './layer.js';

export interface PreparedLinear {
  /** y [T, N] = input(x) [T, K] W^T + b */
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
  /** Causal GQA attention for T tokens, if the engine has it (else the JavaScript one is used). */
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
  // onnxruntime's CPU arena keeps each session's peak buffers until the layer's sessions are released
  // (~180 MB at 8B); without it calibration measured 23% slower, so it stays
  const options = { intraOpNumThreads: threads, interOpNumThreads: 1, graphOptimizationLevel: 'all' as const };
  return {
    name: `onnxruntime (${threads} thread${threads > 1 ? 's' : ''})`,
    async attention(T, nH, nKV, d) {
      const key = `${T},${nH},${nKV},${d}`;
      let session = attention.get(key);
      if (!session) {
        session = ort.InferenceSession.create(attentionModel(T, nH, nKV, d), options);
        attention.set(key, session);
      }
      const s = await session;
      return async (q, k, v) => {
        const y = new Float32Array(T * nH * d);
        await s.run(
          {
            Q: new ort.Tensor('float32', q, [T, nH * d]),
            K: new ort.Tensor('float32', k, [T, nKV * d]),
            V: new ort.Tensor('float32', v, [T, nKV * d]),
          },
          { Y: new ort.Tensor('float32', y, [T, nH * d]) },
        );
        return y;
      };
    },
    async prepare(l) {
      const wt = new Float32Array(l.K * l.N);
      if (l.writeTransposed) await l.writeTransposed(wt, l.N, 0);
      else transposeInto(wt, l.N, 0, l);
      return this.prepareTransposed!({ wt, N: l.N, K: l.K, b: l.b, input: l.input });
    },
    async prepareTransposed({ wt, N, K, b, input }) {
      const session = await ort.InferenceSession.create(matmulModel(K, N, b), options);
      const w = new ort.Tensor('float32', wt, [K, N]);
      return {
        async run(x, T) {
          const xin = input ? input(x, T) : x;
          // the output in a buffer of ours: left to onnxruntime, it would come from the session's
          // arena, which keeps its peak (58 MB for gate|up at 8B) until the session is released
          const y = new Float32Array(T * N);
          await session.run({ X: new ort.Tensor('float32', xin, [T, K]), Wt: w }, { Y: new ort.Tensor('float32', y, [T, N]) });
          return y;
        },
        release: () => session.release(),
      };
    },
  };
}

/** Writes W [l.N, l.K] transposed into columns [off, off + l.N) of wt [K, N]; returns wt. */
export function transposeInto(wt: Float32Array, N: number, off: number, l: { w: Float32Array; N: number; K: number }): Float32Array {
  const { w, K } = l;
  // blocks of 64 rows: the writes of one row go N apart, the block keeps them in nearby lines
  for (let n0 = 0; n0 < l.N; n0 += 64) {
    const n1 = Math.min(l.N, n0 + 64);
    for (let k = 0; k < K; k++) {
      const base = k * N + off;
      for (let n = n0; n < n1; n++) wt[base + n] = w[n * K + k]!;
    }
  }
  return wt;
}

/** The fastest engine available: onnxruntime when it loads, else plain JavaScript. */
export async function defaultGemm(threads: number): Promise<GemmEngine> {
  const ort = await loadOrt();
  return ort ? onnxGemm(ort, threads) : jsGemm;
}
