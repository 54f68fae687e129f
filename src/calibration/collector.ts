/** Accumulates activation statistics as the forward pass reports linear inputs and K/V. */
import type { Stats } from '../export/stats.js';

interface LinearAcc {
  amax: number;
  absSum: Float64Array;
  chAmax: Float32Array;
  tokens: number;
}

export class StatsCollector {
  private linears = new Map<string, LinearAcc>();
  private kv = new Map<string, { k: number; v: number }>();

  // one input's per-channel sums of |x| and maxima, reused from call to call
  private sum = new Float64Array(0);
  private max = new Float32Array(0);

  /** x [T, K]: the input of `module` for T tokens. */
  observe(module: string, x: Float32Array, T: number, K: number): void {
    this.observeShared([module], x, T, K);
  }

  /**
   * x [T, K]: the input of every module in `modules` (q, k and v read one input): its per-channel
   * sums and maxima are taken once and added to each. Sums are f64 per channel, as one pass over all
   * tokens would keep them.
   */
  observeShared(modules: readonly string[], x: Float32Array, T: number, K: number): void {
    if (this.sum.length !== K) {
      this.sum = new Float64Array(K);
      this.max = new Float32Array(K);
    }
    const sum = this.sum.fill(0), max = this.max.fill(0);
    for (let t = 0; t < T; t++) {
      const o = t * K;
      for (let k = 0; k < K; k++) {
        const v = Math.abs(x[o + k]!);
        sum[k] = sum[k]! + v;
        if (v > max[k]!) max[k] = v;
      }
    }
    let m = 0;
    for (let k = 0; k < K; k++) if (max[k]! > m) m = max[k]!;
    for (const module of modules) {
      let a = this.linears.get(module);
      if (!a) {
        a = { amax: 0, absSum: new Float64Array(K), chAmax: new Float32Array(K), tokens: 0 };
        this.linears.set(module, a);
      }
      for (let k = 0; k < K; k++) {
        a.absSum[k] = a.absSum[k]! + sum[k]!;
        if (max[k]! > a.chAmax[k]!) a.chAmax[k] = max[k]!;
      }
      if (m > a.amax) a.amax = m;
      a.tokens += T;
    }
  }

  observeKV(attention: string, k: Float32Array, v: Float32Array): void {
    const e = this.kv.get(attention) ?? { k: 0, v: 0 };
    for (let i = 0; i < k.length; i++) e.k = Math.max(e.k, Math.abs(k[i]!));
    for (let i = 0; i < v.length; i++) e.v = Math.max(e.v, Math.abs(v[i]!));
    this.kv.set(attention, e);
  }

  /** Statistics named as ../shared/data/reference names them. */
  result(): Stats {
    const s: Stats = new Map();
    for (const [m, a] of this.linears) {
      s.set(`${m}.input_amax`, Float32Array.of(a.amax));
      // an expert no token was routed to: amax 0 (the export then takes its siblings' maximum)
      s.set(`${m}.input_absmean`, Float32Array.from(a.absSum, (x) => (a.tokens === 0 ? 0 : x / a.tokens)));
      s.set(`${m}.input_channel_amax`, a.chAmax);
    }
    for (const [attn, e] of this.kv) {
      s.set(`${attn}.k_amax`, Float32Array.of(e.k));
      s.set(`${attn}.v_amax`, Float32Array.of(e.v));
    }
    return s;
  }
}
