/**
 * `rxquant verify`: checks an export against the engines' loading checklist (engines.md §6), every
 * point that can be checked from the files alone.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { openCheckpoint } from './safetensors/checkpoint.js';
import { decodeToFloat32 } from './codecs/float.js';
import { E4M3_VALUES } from './codecs/e4m3.js';
import { architectureFor } from './models/index.js';
import { medusaLayout, parseMedusa } from './models/medusa.js';
import { eagleFamily, eagleOuterLayout, isEagleDraft, parseEagle, type EagleConfig } from './models/eagle.js';
import { matchesPattern } from './export/exclude.js';
import { toQuantizationConfig, type HfQuantConfig } from './export/quant-config.js';
import { FORMATS, engineSupport, formatByQuantAlgo } from './formats/registry.js';
import { fusedPartName, type EngineSupport, type LinearShape } from './formats/format.js';
import { CheckpointError } from './errors.js';
import type { TensorRef } from './safetensors/file.js';

export interface VerifyReport {
  dir: string;
  quantAlgo: string | undefined;
  failures: string[];
  notes: string[];
  engines: EngineSupport[];
  quantizedModules: number;
  /** Medusa heads (config.json's "medusa" block): heads, ResBlocks per head, head linears and how many are quantized. */
  medusa?: { heads: number; resBlocks: number; linears: number; quantized: number };
  /** An EAGLE draft (config.json's "eagle_config"): its layers, linears (fc included) and how many are quantized, the target layers it reads. */
  eagle?: { layers: number; linears: number; quantized: number; aux: number[] };
}

async function readJson(path: string): Promise<any> {
  try {
    return JSON.parse(await readFile(path, 'utf8'));
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'ENOENT' ? undefined : null;
  }
}

const same = (a: unknown, b: unknown) => JSON.stringify(a) === JSON.stringify(b);

export async function verifyExport(dir: string): Promise<VerifyReport> {
  const failures: string[] = [];
  const notes: string[] = [];
  const fail = (s: string) => failures.push(s);
  const hf = (await readJson(join(dir, 'hf_quant_config.json'))) as HfQuantConfig | undefined | null;
  const config = await readJson(join(dir, 'config.json'));
  if (config === undefined) throw new CheckpointError(dir, 'no config.json: not a Hugging Face checkpoint folder');
  if (config === null) throw new CheckpointError(join(dir, 'config.json'), 'not valid JSON');
  const qc = config.quantization_config;
  // 1-3: both configs, their shapes, agreement
  if (hf === undefined) fail('hf_quant_config.json is missing (TensorRT-LLM reads it first)');
  else if (hf === null) fail('hf_quant_config.json is not valid JSON');
  if (!qc) fail('config.json has no quantization_config (vLLM and SGLang read it first)');
  const q = hf?.quantization;
  if (hf) {
    if (hf.producer?.name !== 'modelopt' || typeof hf.producer?.version !== 'string') fail('hf_quant_config.json: producer must be {"name": "modelopt", "version": "x.y.z"}');
    if (!q || typeof q !== 'object') fail('hf_quant_config.json: no "quantization" object');
    else {
      for (const k of ['quant_algo', 'kv_cache_quant_algo', 'exclude_modules'] as const) {
        if (!(k in q)) fail(`hf_quant_config.json: quantization.${k} is missing`);
      }
      if (!Array.isArray(q.exclude_modules)) fail('hf_quant_config.json: exclude_modules must be a list');
    }
  }
  const algo: string | undefined = q?.quant_algo ?? qc?.quant_algo;
  const fmt = formatByQuantAlgo(algo);
  if (algo !== undefined && !fmt) fail(`quant_algo "${algo}" is not one rxquant knows (${Object.values(FORMATS).map((f) => f.quantAlgo).join(', ')})`);
  if (q && fmt?.groupSize !== undefined && q.group_size !== fmt.groupSize) fail(`hf_quant_config.json: group_size must be ${fmt.groupSize} for ${algo}`);
  if (q && !(q.kv_cache_quant_algo === null || q.kv_cache_quant_algo === 'FP8')) fail(`kv_cache_quant_algo must be null or "FP8", got ${JSON.stringify(q.kv_cache_quant_algo)}`);
  const eagleDraft = isEagleDraft(config);
  if (eagleDraft && hf && qc) {
    // ModelOpt's EAGLE exporter puts the hf_quant_config object itself in config.json (families.md §7.2)
    if (!same(qc, hf)) fail('config.json quantization_config of an EAGLE draft must be hf_quant_config.json\'s object as it is (the nested form ModelOpt writes)');
  } else if (hf && q && qc) {
    const expected = toQuantizationConfig(hf);
    if (qc.quant_method !== 'modelopt') fail('config.json: quantization_config.quant_method must be "modelopt"');
    if (!same(qc, JSON.parse(JSON.stringify(expected)))) {
      for (const k of new Set([...Object.keys(expected), ...Object.keys(qc)])) {
        if (!same(qc[k], JSON.parse(JSON.stringify(expected[k] ?? null)))) fail(`config.json quantization_config.${k} disagrees with hf_quant_config.json`);
      }
    }
  }
  const excludes: string[] = Array.isArray(q?.exclude_modules) ? q.exclude_modules : [];
  const excluded = (m: string) => excludes.some((p) => matchesPattern(m, p));

  // tensors
  const ck = await openCheckpoint(dir);
  let quantizedModules = 0;
  let medusaReport: VerifyReport['medusa'];
  let eagleReport: VerifyReport['eagle'];
  let linearShapes: LinearShape[] = [];
  try {
    const t = ck.tensors;
    for (const name of t.keys()) {
      if (/\.(weight_scale_inv|weight_packed|weight_global_scale)$/.test(name)) fail(`${name}: a tensor name of another format`);
    }
    const quantized = new Set([...t.keys()].filter((n) => n.endsWith('.weight_scale')).map((n) => n.slice(0, -'.weight_scale'.length)));
    quantizedModules = quantized.size;
    const scalarOk = async (name: string, required: boolean) => {
      const s = t.get(name);
      if (!s) {
        if (required) fail(`${name} is missing`);
        return undefined;
      }
      if (s.dtype !== 'F32' || !(s.shape.length === 0 || (s.shape.length === 1 && s.shape[0] === 1))) fail(`${name} must be an F32 scalar, is ${s.dtype} [${s.shape.join(', ')}]`);
      const v = decodeToFloat32(await s.read(), s.dtype)[0]!;
      if (!Number.isFinite(v) || v <= 0) fail(`${name} = ${v}: scales must be finite and positive`);
      return v;
    };
    const checkFloatScales = async (ref: TensorRef) => {
      const v = ref.dtype === 'F8_E4M3' ? Float32Array.from(await ref.read(), (b) => E4M3_VALUES[b]!) : decodeToFloat32(await ref.read(), ref.dtype);
      const bad = v.findIndex((x) => !Number.isFinite(x) || x <= 0);
      if (bad >= 0) fail(`${ref.name}[${bad}] = ${v[bad]}: scales must be finite and positive`);
    };
    const values = new Map<string, number | undefined>();
    const shapes = new Map<string, [number, number]>();
    for (const m of [...quantized].sort()) {
      if (excluded(m)) fail(`${m} is quantized but matched by an exclude_modules pattern`);
      const w = t.get(`${m}.weight`);
      const ws = t.get(`${m}.weight_scale`)!;
      if (!w) {
        fail(`${m}.weight is missing`);
        continue;
      }
      if (!fmt) continue;
      if (w.shape.length === 2) shapes.set(m, fmt.logicalShape(w.shape));
      const stored = fmt.checkStored(m, w, ws);
      stored.failures.forEach(fail);
      if (stored.checkBlockScales) await checkFloatScales(ws);
      for (const s of fmt.scalars) if (s !== 'input_scale') values.set(`${m}.${s}`, await scalarOk(`${m}.${s}`, true));
      if (fmt.inputScaleDivisor !== undefined) values.set(`${m}.input_scale`, await scalarOk(`${m}.input_scale`, true));
      else if (t.has(`${m}.input_scale`)) fail(`${m}.input_scale present but ${algo} has no activation scale`);
      const pqs = t.get(`${m}.pre_quant_scale`);
      if (pqs) {
        if (!fmt.awq) fail(`${m}.pre_quant_scale present but ${algo} is not an AWQ format`);
        await checkFloatScales(pqs);
      }
    }
    // 9: fused groups share scalars; 11: unquantized linears are excluded and carry no scales
    let arch;
    let eagle: EagleConfig | undefined;
    try {
      if (eagleDraft) {
        eagle = parseEagle(config, join(dir, 'config.json'));
        arch = eagleFamily(eagle);
      } else arch = architectureFor(config.model_type, join(dir, 'config.json'));
    } catch (e) {
      if (eagleDraft) fail((e as Error).message);
      else notes.push(`model_type ${JSON.stringify(config.model_type)}: fused-group and exclusion checks skipped`);
    }
    const fusedMembers = new Set<string>();
    if (arch) {
      const cfg = arch.parseConfig(config, join(dir, 'config.json'));
      const linears = [...arch.alwaysExcluded];
      // the decoder layers, then the Medusa heads (config.json's "medusa" block), checked alike
      const medusa = parseMedusa(config, join(dir, 'config.json'));
      const layouts = Array.from({ length: cfg.numLayers }, (_, i) => arch!.layer(i, cfg));
      const outer = eagle && eagleOuterLayout(eagle);
      if (eagle) {
        if (outer) layouts.push(outer);
        const all = layouts.flatMap((l) => l.linears);
        eagleReport = { layers: cfg.numLayers, linears: all.length, quantized: all.filter((m) => quantized.has(m)).length, aux: eagle.auxLayerIds };
        const missing = all.find((m) => !t.has(`${m}.weight`));
        if (missing) fail(`${missing}.weight is missing (config.json describes an EAGLE draft of ${cfg.numLayers} layer(s))`);
      }
      if (medusa) {
        const layout = medusaLayout(medusa);
        layouts.push(layout);
        const q = layout.linears.filter((m) => quantized.has(m)).length;
        medusaReport = { heads: medusa.numHeads, resBlocks: medusa.numLayers, linears: layout.linears.length, quantized: q };
        const missing = layout.linears.find((m) => !t.has(`${m}.weight`));
        if (missing) fail(`${missing}.weight is missing (config.json's "medusa" block says ${medusa.numHeads} heads of ${medusa.numLayers} ResBlocks)`);
      }
      for (const layout of layouts) {
        linears.push(...layout.linears, ...(layout.excluded ?? []));
        for (const r of layout.excluded ?? []) if (quantized.has(r)) fail(`${r} is quantized, but routers stay unquantized (engines load them as plain linears)`);
        // fused 3-D expert parameters (Llama 4): named without .weight, one scale set each (families.md §4.3)
        for (const m of layout.fusedExperts ?? []) {
          const w = t.get(m);
          if (!w) {
            fail(`${m} is missing`);
            continue;
          }
          if (w.dtype !== 'F8_E4M3' && w.dtype !== 'U8') {
            if (algo !== undefined && !excluded(m)) fail(`${m} is stored unquantized but not listed in exclude_modules (engines would load it as packed)`);
            continue;
          }
          if (!fmt?.fused || w.shape.length !== 3) {
            fail(`${m}: a quantized fused expert parameter, which ${algo} does not define`);
            continue;
          }
          const [E, a, B] = w.shape as [number, number, number];
          const A = fmt.fused.layout === 'bands' ? a * 2 : a;
          for (const want of fmt.fused.streamedTensors(m, E, A, B)) {
            const got = t.get(want.name);
            if (!got || got.dtype !== want.dtype || !same(got.shape, want.shape)) fail(`${want.name} must be ${want.dtype} [${want.shape.join(', ')}], is ${got ? `${got.dtype} [${got.shape.join(', ')}]` : 'missing'}`);
            else if (want.name !== m) await checkFloatScales(got);
          }
          for (const s of fmt.scalars) await scalarOk(fusedPartName(m, s), true);
        }
        // MoE: one input_scale per projection type across a layer's experts; gate and up of an expert share their weight scale
        const sameAcross = (groups: string[][] | undefined, keys: string[], what: string) => {
          for (const g of groups ?? []) {
            for (const k of keys) {
              const vals = g.filter((m) => quantized.has(m)).map((m) => [m, values.get(`${m}.${k}`)] as const).filter(([, v]) => v !== undefined);
              const odd = vals.find(([, v]) => v !== vals[0]![1]);
              if (odd) fail(`${odd[0]}.${k} = ${odd[1]} differs from ${vals[0]![0]}.${k} = ${vals[0]![1]} (${what})`);
            }
          }
        };
        sameAcross(layout.sharedInputScale, ['input_scale'], 'engines keep one input_scale per projection type for all experts of a layer');
        sameAcross(layout.sharedWeightScale, ['weight_scale', 'weight_scale_2'], "an expert's gate and up share their weight scale (TensorRT-LLM and vLLM load them as one)");
        for (const g of layout.groups) {
          if (g.members.length > 1) g.members.forEach((m) => fusedMembers.add(m));
          const members = g.members.filter((m) => quantized.has(m));
          if (members.length > 0 && members.length < g.members.length) fail(`fused group ${g.members.join(', ')} is partly quantized`);
          if (members.length < 2 || !fmt) continue;
          const keys = ['input_scale', ...(fmt.unifyGroups ? ['weight_scale_2'] : [])];
          for (const k of keys) {
            const vals = members.map((m) => values.get(`${m}.${k}`));
            if (vals[0] !== undefined && vals.some((v) => v !== vals[0])) {
              if (fmt.unifyGroups) fail(`${k} differs inside fused group ${members.join(', ')} (TensorRT-LLM asserts equality)`);
            }
          }
          if (fmt.scalars.includes('weight_scale')) {
            const ws = members.map((m) => values.get(`${m}.weight_scale`));
            if (ws.some((v) => v !== ws[0])) notes.push(`FP8 weight_scale differs across ${members.join(', ')}: engines requantize to the max at load (as with ModelOpt)`);
          }
        }
      }
      for (const m of linears) {
        if (quantized.has(m)) continue;
        if (!t.has(`${m}.weight`) && m === arch.names.lmHead) continue; // tied
        if (t.has(`${m}.weight`) || m === arch.names.embed) {
          if (algo !== undefined && !excluded(m)) fail(`${m} is stored unquantized but not listed in exclude_modules (engines would load it as packed)`);
          for (const s of ['weight_scale_2', 'input_scale', 'pre_quant_scale']) if (t.has(`${m}.${s}`)) fail(`${m}.${s} present on an unquantized module`);
        }
      }
    }
    // 5: KV-cache scales
    const kScales = [...t.keys()].filter((n) => n.endsWith('.k_proj.k_scale'));
    const vScales = [...t.keys()].filter((n) => n.endsWith('.v_proj.v_scale'));
    for (const n of [...kScales, ...vScales]) await scalarOk(n, true);
    if (q?.kv_cache_quant_algo === 'FP8') {
      const layers = typeof config.num_hidden_layers === 'number' ? config.num_hidden_layers : undefined;
      if (kScales.length === 0) notes.push('kv_cache_quant_algo FP8 without k_scale/v_scale tensors (fp8_cast): engines use scale 1.0');
      else if (layers !== undefined && (kScales.length !== layers || vScales.length !== layers)) fail(`KV scales on ${kScales.length}/${vScales.length} of ${layers} attention layers: all or none`);
    }
    linearShapes = [...shapes].map(([module, [N, K]]) => ({ module, N, K, fused: fusedMembers.has(module) }));
  } finally {
    await ck.close();
  }
  return { dir, quantAlgo: algo, failures: [...new Set(failures)], notes, engines: algo ? engineSupport(algo, linearShapes) : [], quantizedModules, ...(medusaReport ? { medusa: medusaReport } : {}), ...(eagleReport ? { eagle: eagleReport } : {}) };
}
