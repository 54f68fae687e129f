/**
 * GEMM engines for the forward pass. `js` is the blocked plain-JavaScript matmul (the reference the
 * others are tested against); `onnx` runs each linear as a one-node onnxruntime session with the
 * weight pre-packed (measured 229 GFLOP/s per core here vs ~1.5 for JavaScript).
 */
import { matmul } from './ops.js';
import { matmulModel } from './onnx.js';
import type { LinearWeights } from './layer.js';

export interface PreparedLinear {
  /** y [T, N] = input(x) [T, K] W^T + b */
  run(x: Float32Array, T: number): Promise<Float32Array>;
  release(): Promise<void>;
}

export interface GemmEngine {
  name: string;
  prepare(l: LinearWeights): Promise<PreparedLinear>;
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
  return {
    name: `onnxruntime (${threads} thread${threads > 1 ? 's' : ''})`,
    async prepare(l) {
      const wt = new Float32Array(l.K * l.N);
      for (let n = 0; n < l.N; n++) for (let k = 0; k < l.K; k++) wt[k * l.N + n] = l.w[n * l.K + k]!;
      const session = await ort.InferenceSession.create(matmulModel(wt, l.K, l.N, l.b), {
        intraOpNumThreads: threads,
        interOpNumThreads: 1,
        graphOptimizationLevel: 'all',
      });
      return {
        async run(x, T) {
          const xin = l.input ? l.input(x, T) : x;
          const out = await session.run({ X: new ort.Tensor('float32', xin, [T, l.K]) });
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
