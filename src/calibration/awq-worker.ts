/**
 * Worker thread of the AWQ search (a Piscina task): one band of rows of the search's candidates, in
 * two phases. 'amax': each candidate's max |W · dtype(s)| over the band (the caller takes the max of
 * the bands); 'build': each candidate's band written into the shared output, whose rows
 * [off, off + N) hold that candidate. `w` and `out` live in SharedArrayBuffers.
 */
import { formatSpec } from '../formats/registry.js';
import type { FloatDType } from '../safetensors/dtypes.js';
import { candidateAmax, candidateRowsInto, castScales, CANDIDATE_ROWS } from './awq-candidate.js';

export interface AwqBandTask {
  phase: 'amax' | 'build';
  format: string;
  dtype: FloatDType;
  /** W [N, K] (shared). */
  w: Float32Array;
  K: number;
  n0: number;
  n1: number;
  candidates: { s: Float32Array; clip: number; amax?: number; off?: number }[];
  /** 'build': [Nt, K] (shared). */
  out?: Float32Array;
}

let scratch = new Float32Array(0);

export default function awqBand(t: AwqBandTask): number[] {
  if (t.phase === 'amax') return t.candidates.map((c) => candidateAmax(t.w, t.K, t.n0, t.n1, castScales(c.s, t.dtype).sw));
  const fq = formatSpec(t.format).fakeQuantizeInPlace!;
  if (scratch.length < CANDIDATE_ROWS * t.K) scratch = new Float32Array(CANDIDATE_ROWS * t.K);
  for (const c of t.candidates) {
    const { sw, p } = castScales(c.s, t.dtype);
    candidateRowsInto(t.out!, c.off!, t.w, t.K, t.n0, t.n1, sw, p, c.amax!, fq, t.dtype, scratch, c.clip);
  }
  return [];
}
