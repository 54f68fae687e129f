/** Rotary position embeddings as transformers computes them (default, linear, llama3 and YaRN scaling). */
import type { RopeConfig } from './config.js';

/** inv_freq[i] = 1 / theta^(2i/d), adjusted by the rope type; f32 like torch. */
export function inverseFrequencies(rope: RopeConfig, headDim: number): Float32Array {
  const half = headDim / 2;
  const inv = new Float32Array(half);
  for (let i = 0; i < half; i++) inv[i] = 1 / Math.pow(rope.theta, Math.fround((2 * i) / headDim));
  if (rope.type === 'linear') for (let i = 0; i < half; i++) inv[i] = inv[i]! / rope.factor!;
  if (rope.type === 'yarn') {
    // transformers' _compute_yarn_parameters: a ramp over the dimensions between the ones that turn
    // beta_fast and beta_slow times in the original context blends extrapolated (unscaled) and
    // interpolated (divided by factor) frequencies
    const dim = headDim, base = rope.theta, factor = rope.factor!, orig = rope.originalMaxPositionEmbeddings!;
    const corr = (rot: number) => (dim * Math.log(orig / (rot * 2 * Math.PI))) / (2 * Math.log(base));
    let low = corr(rope.betaFast!), high = corr(rope.betaSlow!);
    if (rope.truncate !== false) {
      low = Math.floor(low);
      high = Math.ceil(high);
    }
    low = Math.max(low, 0);
    high = Math.min(high, dim - 1);
    if (low === high) high += 0.001;
    for (let i = 0; i < half; i++) {
      const pos = Math.fround(Math.pow(base, Math.fround((2 * i) / dim)));
      const extra = Math.fround(1 / pos), inter = Math.fround(1 / Math.fround(factor * pos));
      const ramp = Math.min(1, Math.max(0, Math.fround((i - low) / (high - low))));
      const ef = Math.fround(1 - ramp);
      inv[i] = Math.fround(Math.fround(inter * Math.fround(1 - ef)) + Math.fround(extra * ef));
    }
  }
  if (rope.type === 'llama3') {
    // transformers' _compute_llama3_parameters
    const factor = rope.factor!, low = rope.lowFreqFactor!, high = rope.highFreqFactor!, old = rope.originalMaxPositionEmbeddings!;
    const lowWavelen = old / low;
    const highWavelen = old / high;
    for (let i = 0; i < half; i++) {
      const f = inv[i]!;
      const wavelen = (2 * Math.PI) / f;
      let v = wavelen > lowWavelen ? f / factor : f;
      const smooth = (old / wavelen - low) / (high - low);
      const smoothed = (1 - smooth) * (v / factor) + smooth * v;
      const isMedium = !(wavelen < highWavelen) && !(wavelen > lowWavelen);
      if (isMedium) v = smoothed;
      inv[i] = v;
    }
  }
  return inv;
}

/** cos/sin tables [T, headDim] for positions 0..T-1 (emb = cat(freqs, freqs)). */
export function ropeTables(rope: RopeConfig, headDim: number, T: number): { cos: Float32Array; sin: Float32Array } {
  const inv = inverseFrequencies(rope, headDim);
  const half = headDim / 2;
  const cos = new Float32Array(T * headDim);
  const sin = new Float32Array(T * headDim);
  for (let t = 0; t < T; t++)
    for (let i = 0; i < half; i++) {
      const a = Math.fround(t * inv[i]!);
      const f = rope.attentionFactor ?? 1; // YaRN scales cos and sin
      const c = Math.fround(Math.cos(a) * f), s = Math.fround(Math.sin(a) * f);
      cos[t * headDim + i] = c;
      cos[t * headDim + i + half] = c;
      sin[t * headDim + i] = s;
      sin[t * headDim + i + half] = s;
    }
  return { cos, sin };
}

/** In place: x = x * cos + rotate_half(x) * sin for each head of width d in rows [T, heads*d]. */
export function applyRope(x: Float32Array, T: number, heads: number, d: number, cos: Float32Array, sin: Float32Array): void {
  const half = d / 2;
  const tmp = new Float32Array(d);
  for (let t = 0; t < T; t++)
    for (let h = 0; h < heads; h++) {
      const o = (t * heads + h) * d;
      for (let i = 0; i < d; i++) tmp[i] = x[o + i]!;
      for (let i = 0; i < d; i++) {
        const rot = i < half ? -tmp[i + half]! : tmp[i - half]!;
        x[o + i] = tmp[i]! * cos[t * d + i]! + rot * sin[t * d + i]!;
      }
    }
}
