/**
 * GEMM engines for the forward pass. `js` is the blocked plain-JavaScript matmul (the reference the
 * others are tested against); `onnx` runs each linear as a one-node onnxruntime session with the
 * weight pre-packed (measured 229 GFLOP/s per core here vs ~1.5 for JavaScript).
 */
import { matmul } from './ops.js';
import { attentionModel, matmulModel } from './onnx.js';
import type { LinearWeights } from './layer.js';

export interface PreparedLinear {
  /** y [T, N] = input(x) [T, K] W^T + b */
  run(x: Float32Array, T: number): Promise<Float32Array>;
  release(): Promise<void>;
}

export interface GemmEngine {
  name: string;
  prepare(l: LinearWeights): Promise<PreparedLinear>;
  /** prepare() keeps its own copy of the weights (the caller may drop its f32 arrays afterwards). */
  copiesWeights?: boolean;
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
  const options = { intraOpNumThreads: threads, interOpNumThreads: 1, graphOptimizationLevel: 'all' as const };
  return {
    name: `onnxruntime (${threads} thread${threads > 1 ? 's' : ''})`,
    copiesWeights: true,
    async attention(T, nH, nKV, d) {
      const key = `${T},${nH},${nKV},${d}`;
      let session = attention.get(key);
      if (!session) {
        session = ort.InferenceSession.create(attentionModel(T, nH, nKV, d), options);
        attention.set(key, session);
      }
      const s = await session;
      return async (q, k, v) => {
        const out = await s.run({
          Q: new ort.Tensor('float32', q, [T, nH * d]),
          K: new ort.Tensor('float32', k, [T, nKV * d]),
          V: new ort.Tensor('float32', v, [T, nKV * d]),
        });
        return out.Y!.data as Float32Array;
      };
    },
    async prepare(l) {
      const wt = new Float32Array(l.K * l.N);
      for (let n = 0; n < l.N; n++) for (let k = 0; k < l.K; k++) wt[k * l.N + n] = l.w[n * l.K + k]!;
      const session = await ort.InferenceSession.create(matmulModel(wt, l.K, l.N, l.b), {
        intraOpNumThreads: threads,
        interOpNumThreads: 1,
        graphOptimizationLevel: 'all',
      });
      const { input, K } = l; // not l itself: the session has the weights, the f32 copy may go
      return {
        async run(x, T) {
          const xin = input ? input(x, T) : x;
          const out = await session.run({ X: new ort.Tensor('float32', xin, [T, K]) });
          return out.Y!.data as Float32Array;
        },
        release: () => session.release(),
      };
    },
  };
}

/** The fastest engine available: onnxruntime when it loads, else plain JavaScript. */
export async function defaultGemm(threads: number): Promise<GemmEngine> {
  const ort = await loadOrt();
  return ort ? onnxGemm(ort, threads) : jsGemm;
}
