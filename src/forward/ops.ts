/**
 * The f32 building blocks of a decoder forward pass, written plainly (llama2.c style).
 * Shapes in comments: T tokens, K in-features, N out-features. Row-major everywhere.
 */

/** Reference matmul: y[t, n] = sum_k x[t, k] * W[n, k] (+ b[n]). A triple loop, for tests. */
export function matmulRef(x: Float32Array, T: number, K: number, w: Float32Array, N: number, b?: Float32Array): Float32Array {
  const y = new Float32Array(T * N);
  for (let t = 0; t < T; t++)
    for (let n = 0; n < N; n++) {
      let s = 0;
      for (let k = 0; k < K; k++) s += x[t * K + k]! * w[n * K + k]!;
      y[t * N + n] = s + (b ? b[n]! : 0);
    }
  return y;
}

/**
 * Blocked matmul, same result as matmulRef up to summation order: four tokens share each
 * weight-row load, four accumulators per token break the dependency chain.
 * x [T, K], W [N, K] (a Linear weight), b [N] -> y [T, N]
 */
export function matmul(x: Float32Array, T: number, K: number, w: Float32Array, N: number, b?: Float32Array, y: Float32Array = new Float32Array(T * N)): Float32Array {
  let t = 0;
  for (; t + 4 <= T; t += 4) {
    const x0 = t * K, x1 = x0 + K, x2 = x1 + K, x3 = x2 + K;
    for (let n = 0; n < N; n++) {
      const wo = n * K;
      let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      for (let k = 0; k < K; k++) {
        const wk = w[wo + k]!;
        s0 += x[x0 + k]! * wk;
        s1 += x[x1 + k]! * wk;
        s2 += x[x2 + k]! * wk;
        s3 += x[x3 + k]! * wk;
      }
      const bias = b ? b[n]! : 0;
      y[t * N + n] = s0 + bias;
      y[(t + 1) * N + n] = s1 + bias;
      y[(t + 2) * N + n] = s2 + bias;
      y[(t + 3) * N + n] = s3 + bias;
    }
  }
  for (; t < T; t++) {
    const xo = t * K;
    for (let n = 0; n < N; n++) {
      const wo = n * K;
      let s0 = 0, s1 = 0;
      let k = 0;
      for (; k + 2 <= K; k += 2) {
        s0 += x[xo + k]! * w[wo + k]!;
        s1 += x[xo + k + 1]! * w[wo + k + 1]!;
      }
      if (k < K) s0 += x[xo + k]! * w[wo + k]!;
      y[t * N + n] = s0 + s1 + (b ? b[n]! : 0);
    }
  }
  return y;
}

/** RMSNorm over rows of width D, as transformers' LlamaRMSNorm: w * x / sqrt(mean(x^2) + eps). */
export function rmsnorm(x: Float32Array, rows: number, D: number, weight: Float32Array, eps: number, out: Float32Array = new Float32Array(rows * D)): Float32Array {
  for (let r = 0; r < rows; r++) {
    const o = r * D;
    let ss = 0;
    for (let i = 0; i < D; i++) ss += x[o + i]! * x[o + i]!;
    const inv = 1 / Math.sqrt(Math.fround(ss / D) + eps);
    for (let i = 0; i < D; i++) out[o + i] = weight[i]! * Math.fround(x[o + i]! * inv);
  }
  return out;
}

export function silu(v: number): number {
  return v / (1 + Math.exp(-v));
}
