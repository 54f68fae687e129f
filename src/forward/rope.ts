/** Rotary position embeddings as transformers computes them (default, linear and llama3 scaling). */
import type { RopeConfig } from './config.js';

/** inv_freq[i] = 1 / theta^(2i/d), adjusted by the rope type; f32 like torch. */
export function inverseFrequencies(rope: RopeConfig, headDim: number): Float32Array {
  const half = headDim / 2;
  const inv = new Float32Array(half);
  for (let i = 0; i < half; i++) inv[i] = 1 / Math.pow(rope.theta, Math.fround((2 * i) / headDim));
  if (rope.type === 'linear') for (let i = 0; i < half; i++) inv[i] = inv[i]! / rope.factor!;
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
      const c = Math.cos(a), s = Math.sin(a);
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
