/**
 * Quantizes one decoder layer, following ModelOpt's export order (spec §1 step 3-5):
 *   1. AWQ formats: smooth each weight by its pre_quant_scale, fold o_proj/down_proj scales into
 *      v_proj/up_proj rows (NVFP4_AWQ, Llama/Qwen3), average the scales of fused siblings and fold
 *      them into the norm that feeds them (§8.2-8.3);
 *   2. unify input amax and global weight amax across fused siblings (everything but per-tensor FP8);
 *   3. per linear: scales and codes, the kernel running in a worker thread.
 */
import { QuantizationError } from '../errors.js';
import { decodeToFloat32, encodeFromFloat32, roundToDType } from '../codecs/float.js';
import { amaxOf, firstNonFinite } from '../formats/common.js';
import { fp8WeightScale } from '../formats/fp8.js';
import { nvfp4GlobalScale } from '../formats/nvfp4.js';
import type { KernelPool } from '../kernels/pool.js';
import type { FloatDType } from '../safetensors/dtypes.js';
import type { ModelUnit, QuantizedLinear, QuantizedUnit } from '../pipeline/units.js';
import { keepsPreQuantScale, type ExportPlan } from './plan.js';
import { scalarStat, type Stats } from './stats.js';

interface Work {
  module: string;
  N: number;
  K: number;
  dtype: FloatDType;
  w: Float32Array;
  /** Current pre_quant_scale (AWQ), undefined once folded away. */
  pqs?: Float32Array;
  inputAmax?: number;
}

export async function quantizeLayer(unit: ModelUnit, plan: ExportPlan, stats: Stats, pool: KernelPool): Promise<QuantizedUnit> {
  const replaced = new Map<string, Uint8Array>();
  const kvScales = new Map<string, number>();
  const result: QuantizedUnit = { ...unit, plan, linears: [], replaced, kvScales };
  if (unit.kind !== 'layer') return result;
  const layout = plan.model.layers[unit.layer]!;
  const fmt = plan.format;
  const byName = new Map(unit.tensors.map((t) => [t.name, t]));
  const tensor = (name: string) => {
    const t = byName.get(name);
    if (!t) throw new QuantizationError(`layer ${unit.layer}: tensor "${name}" is not in this unit`);
    return t;
  };

  // -- load the weights that will be quantized
  const work = new Map<string, Work>();
  for (const m of layout.linears) {
    const d = plan.decisions.get(m)!;
    if (!d.quantized) continue;
    const t = tensor(`${m}.weight`);
    const w = decodeToFloat32(await t.read(), t.dtype, t.name);
    const bad = firstNonFinite(w);
    if (bad >= 0) {
      throw new QuantizationError(
        `${t.file.path}: tensor "${t.name}" has ${w[bad]} at row ${Math.floor(bad / d.K)}, column ${bad % d.K}; refusing to quantize (a NaN/Inf scale breaks every engine)`,
      );
    }
    const entry: Work = { module: m, N: d.N, K: d.K, dtype: d.dtype, w };
    if (fmt.inputScaleDivisor !== undefined) {
      const a = scalarStat(stats, `${m}.input_amax`);
      if (a === undefined) throw new QuantizationError(`format ${fmt.name} needs "${m}.input_amax" in the activation statistics`);
      entry.inputAmax = a;
    }
    work.set(m, entry);
  }

  // -- 1. AWQ: smoothing and folding
  if (fmt.awq) {
    for (const e of work.values()) {
      const given = stats.get(`${e.module}.pre_quant_scale`);
      if (given && given.length !== e.K) {
        throw new QuantizationError(`statistic "${e.module}.pre_quant_scale" has ${given.length} values, expected ${e.K}`);
      }
      // stored in the weight dtype, so round first; ones when no AWQ search ran (then nothing changes)
      e.pqs = given ? given.map((x) => roundToDType(x, e.dtype)) : new Float32Array(e.K).fill(1);
      if (given) {
        if (e.pqs.some((x) => !(x > 0) || !Number.isFinite(x))) {
          throw new QuantizationError(`statistic "${e.module}.pre_quant_scale" must be positive and finite`);
        }
        smooth(e.w, e.K, e.pqs, e.dtype); // W' = W / pqs, as the AWQ search leaves it
        const ch = stats.get(`${e.module}.input_channel_amax`);
        if (ch && e.inputAmax !== undefined) {
          let m = 0;
          for (let k = 0; k < e.K; k++) m = Math.max(m, Math.fround(ch[k]! * e.pqs[k]!));
          e.inputAmax = m; // amax of x * pre_quant_scale
        }
      }
    }
    if (fmt.name === 'nvfp4_awq') {
      for (const f of layout.linearFolds) {
        const from = work.get(f.from);
        const into = work.get(f.into);
        if (!from?.pqs || !into || from.pqs.length !== into.N) continue;
        scaleRows(into.w, into.K, from.pqs, into.dtype);
        const bias = byName.get(`${f.into}.bias`);
        if (bias) {
          const b = decodeToFloat32(await bias.read(), bias.dtype);
          for (let j = 0; j < b.length; j++) b[j] = roundToDType(Math.fround(b[j]! * from.pqs[j]!), into.dtype);
          replaced.set(bias.name, encodeFromFloat32(b, into.dtype));
        }
        from.pqs = undefined;
      }
    }
    for (const g of layout.groups) {
      const members = g.members.map((m) => work.get(m)).filter((e): e is Work => e !== undefined);
      if (members.length !== g.members.length || members.length < 2 || !g.norm) continue;
      const K = members[0]!.K;
      const mean = new Float32Array(K);
      for (let k = 0; k < K; k++) {
        let s = 0;
        for (const e of members) s = Math.fround(s + e.pqs![k]!);
        mean[k] = roundToDType(Math.fround(s / members.length), members[0]!.dtype);
      }
      for (const e of members) {
        resmooth(e.w, e.K, e.pqs!, mean, e.dtype);
        e.pqs = undefined;
      }
      const nt = tensor(`${g.norm}.weight`);
      const nw = decodeToFloat32(await nt.read(), nt.dtype, nt.name);
      const ndt = nt.dtype as FloatDType;
      for (let k = 0; k < nw.length; k++) nw[k] = roundToDType(Math.fround(nw[k]! * mean[k]!), ndt);
      replaced.set(nt.name, encodeFromFloat32(nw, ndt));
    }
    for (const e of work.values()) {
      if (e.pqs && !keepsPreQuantScale(plan, e.module)) {
        throw new QuantizationError(`internal: ${e.module} kept a pre_quant_scale the plan folded away`);
      }
    }
  }

  // -- 2. shared scalars across fused siblings
  const weightAmax = new Map<string, number>();
  for (const e of work.values()) weightAmax.set(e.module, amaxOf(e.w));
  if (fmt.unifyGroups) {
    for (const g of layout.groups) {
      const members = g.members.map((m) => work.get(m)).filter((e): e is Work => e !== undefined);
      if (members.length < 2) continue;
      const wmax = Math.max(...members.map((e) => weightAmax.get(e.module)!));
      for (const e of members) weightAmax.set(e.module, wmax);
      if (fmt.inputScaleDivisor !== undefined) {
        const imax = Math.max(...members.map((e) => e.inputAmax!));
        for (const e of members) e.inputAmax = imax;
      }
    }
  }

  // -- 3. kernels
  const jobs = [...work.values()].map(async (e): Promise<QuantizedLinear> => {
    const wAmax = weightAmax.get(e.module)!;
    const inputScale = e.inputAmax === undefined ? undefined : e.inputAmax === 0 ? 1 : Math.fround(e.inputAmax / fmt.inputScaleDivisor!);
    const base = { module: e.module, N: e.N, K: e.K, dtype: e.dtype, inputScale, preQuantScale: e.pqs };
    switch (fmt.name) {
      case 'fp8': {
        const scale = fp8WeightScale(wAmax);
        const r = await pool.run({ kind: 'fp8', w: e.w, dtype: e.dtype, scale });
        return { ...base, codes: r.codes, weightScale: Float32Array.of(scale) };
      }
      case 'fp8_pb_wo': {
        const r = await pool.run({ kind: 'fp8_block', w: e.w, N: e.N, K: e.K });
        return { ...base, codes: r.codes, weightScale: r.scales! };
      }
      case 'nvfp4':
      case 'nvfp4_awq': {
        const ws2 = nvfp4GlobalScale(wAmax);
        const r = await pool.run({ kind: 'nvfp4', w: e.w, N: e.N, K: e.K, ws2 });
        return { ...base, codes: r.codes, weightScale: r.scales!, weightScale2: ws2 };
      }
      case 'int4_awq':
      case 'w4a8_awq': {
        const r = await pool.run({ kind: 'int4', w: e.w, N: e.N, K: e.K });
        const ws2 = fmt.name === 'w4a8_awq' ? (wAmax === 0 ? 1 : Math.fround(wAmax / 448)) : undefined;
        return { ...base, codes: r.codes, weightScale: r.scales!, weightScale2: ws2 };
      }
    }
  });
  result.linears = await Promise.all(jobs);

  if (plan.kvCache === 'fp8') {
    for (const kv of ['k', 'v'] as const) {
      const a = scalarStat(stats, `${layout.attention}.${kv}_amax`);
      if (a === undefined) throw new QuantizationError(`--kv-cache fp8 needs "${layout.attention}.${kv}_amax" in the statistics`);
      kvScales.set(`${layout.attention}.${kv}_proj.${kv}_scale`, Math.fround(a / 448));
    }
  }
  return result;
}

/** W[n, k] <- dtype(W[n, k] / pqs[k]) */
function smooth(w: Float32Array, K: number, pqs: Float32Array, dtype: FloatDType): void {
  for (let i = 0; i < w.length; i++) w[i] = roundToDType(Math.fround(w[i]! / pqs[i % K]!), dtype);
}

/** W[n, k] <- dtype(W[n, k] * old[k] / new[k]), in f32 (spec §8.2 step 1). */
function resmooth(w: Float32Array, K: number, oldS: Float32Array, newS: Float32Array, dtype: FloatDType): void {
  for (let i = 0; i < w.length; i++) {
    const k = i % K;
    w[i] = roundToDType(Math.fround(Math.fround(w[i]! * oldS[k]!) / newS[k]!), dtype);
  }
}

/** W[j, :] <- dtype(W[j, :] * s[j]) */
function scaleRows(w: Float32Array, K: number, s: Float32Array, dtype: FloatDType): void {
  for (let i = 0; i < w.length; i++) w[i] = roundToDType(Math.fround(w[i]! * s[Math.floor(i / K)]!), dtype);
}
