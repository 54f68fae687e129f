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

  /** x [T, K]: the input of `module` for T tokens. */
  observe(module: string, x: Float32Array, T: number, K: number): void {
    let a = this.linears.get(module);
    if (!a) {
      a = { amax: 0, absSum: new Float64Array(K), chAmax: new Float32Array(K), tokens: 0 };
      this.linears.set(module, a);
    }
    let m = a.amax;
    for (let t = 0; t < T; t++) {
      const o = t * K;
      for (let k = 0; k < K; k++) {
        const v = Math.abs(x[o + k]!);
        a.absSum[k] = a.absSum[k]! + v;
        if (v > a.chAmax[k]!) a.chAmax[k] = v;
        if (v > m) m = v;
      }
    }
    a.amax = m;
    a.tokens += T;
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
