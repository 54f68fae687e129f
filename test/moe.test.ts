/**
 * Mixture-of-experts families (Mixtral, Qwen3-MoE) against transformers' reference outputs
 * (../shared/data/reference/synthetic/{mixtral,qwen3_moe}): hidden states, logits and every
 * statistic transformers recorded; exports checked byte for byte against the spec's formulas
 * (families.md §1.3, §1.5, §1.6) applied to the source and the statistics; verify on broken copies.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chmod, cp, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openCheckpoint, loadStats, exportCheckpoint, verifyExport, type Stats } from '../src/index.js';
import { calibrateModel } from '../src/calibrate-checkpoint.js';
import { perplexity } from '../src/eval.js';
import { jsGemm } from '../src/forward/gemm.js';
import { quantizeFp8Ref } from '../src/formats/fp8.js';
import { moeLayerOverSamples, type MoeLayerNames } from '../src/forward/moe.js';
import { quantizeNvfp4Ref } from '../src/formats/nvfp4.js';
import { packNibblesK } from '../src/codecs/e2m1.js';
import { planShards, ShardWriter } from '../src/safetensors/writer.js';
import { synthetic } from './helpers.js';
import { amaxOf } from '../src/formats/common.js';
import { checkForwardAgainstReference, checkPartsAgainstWholeLayer, expectStatsMatchReference, inputIds } from './reference-forward.js';

const FAMILIES = {
  mixtral: { block: 'block_sparse_moe', leaves: ['w1', 'w3', 'w2'], experts: 4 },
  qwen3_moe: { block: 'mlp', leaves: ['gate_proj', 'up_proj', 'down_proj'], experts: 8 },
} as const;

let tmp: string;
beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'rxq-moe-'));
});
afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});



for (const [family, f] of Object.entries(FAMILIES)) {
  const dir = synthetic(family);
  const refPath = join(dir, 'reference.safetensors');

  describe(`${family}: forward pass vs transformers`, () => {
    for (const engine of ['js', 'onnx'] as const) {
      it(`hidden states, final norm and logits within 1e-4 relative, ${engine} GEMM`, () => checkForwardAgainstReference(dir, refPath, engine));
    }
  });


  describe(`${family}: a layer over all samples, experts a group at a time`, () => {
    it('gives the same hidden states and statistics, bit for bit, as the whole layer on each sample', () =>
      checkPartsAgainstWholeLayer(dir, refPath, 0, async ({ cfg, src, layout, states, cos, sin, hooks }) => {
        const role = (r: string) => layout.linears[layout.roles.indexOf(r)]!;
        const names: MoeLayerNames = {
          q: role('q'), k: role('k'), v: role('v'), o: role('o'),
          inputNorm: `${layout.prefix}.input_layernorm.weight`, postNorm: `${layout.prefix}.post_attention_layernorm.weight`,
          qNorm: `${layout.attention}.q_norm.weight`, kNorm: `${layout.attention}.k_norm.weight`,
          mlp: { kind: 'moe', router: layout.observed!.router!, experts: Array.from({ length: cfg.moe!.numExperts }, (_, e) => ({ gate: role(`e${e}.gate`), up: role(`e${e}.up`), down: role(`e${e}.down`) })) },
        };
        // one expert per group: the smallest budget
        await moeLayerOverSamples(src, names, cfg, cfg.moe!, jsGemm, states, cos, sin, hooks, 3 * cfg.moe!.expertIntermediateSize * cfg.hiddenSize * 4);
      }));
  });

  describe(`${family}: calibration and export`, () => {
    let stats: Stats;
    beforeAll(async () => {
      stats = await calibrateModel(dir, await inputIds(refPath));
    });

    it('every statistic transformers recorded within 1e-4; one statistic per expert linear, named after the hub module', async () => {
      const checked = expectStatsMatchReference(stats, await loadStats(refPath));
      expect(checked).toBeGreaterThanOrEqual(2 * 4 * 2 + 2);
      for (let l = 0; l < 2; l++) {
        for (let e = 0; e < f.experts; e++) {
          for (const leaf of f.leaves) {
            const a = stats.get(`model.layers.${l}.${f.block}.experts.${e}.${leaf}.input_amax`);
            expect(a, `${l} ${e} ${leaf}`).toBeDefined();
            expect(a!.length).toBe(1);
            expect(a![0]).toBeGreaterThanOrEqual(0);
          }
        }
        // the router sees the post-attention normed input, as every expert's gate and up (max over the routed tokens)
        const router = stats.get(`model.layers.${l}.${f.block}.gate.input_amax`)![0]!;
        const gateMax = Math.max(...Array.from({ length: f.experts }, (_, e) => stats.get(`model.layers.${l}.${f.block}.experts.${e}.${f.leaves[0]}.input_amax`)![0]!));
        expect(gateMax).toBeLessThanOrEqual(router);
        expect(gateMax).toBeGreaterThan(0);
      }
    });

    for (const format of ['fp8', 'nvfp4'] as const) {
      it(`${format}: exclude_modules as the spec computes, scales shared as ModelOpt shares them, bytes from the spec's formulas, verify passes`, async () => {
        const out = join(tmp, `${family}-${format}`);
        await exportCheckpoint({ model: dir, format, out, stats, workers: 0 });
        const hq = JSON.parse(await readFile(join(out, 'hf_quant_config.json'), 'utf8'));
        expect(hq.quantization.exclude_modules).toEqual(['lm_head', 'model.embed_tokens', `model.layers.0.${f.block}.gate`, `model.layers.1.${f.block}.gate`]);
        const r = await verifyExport(out);
        expect(r.failures).toEqual([]);
        const src = await openCheckpoint(dir);
        const ex = await openCheckpoint(out);
        const scalar = async (n: string) => (await ex.tensors.get(n)!.toFloat32())[0]!;
        for (let l = 0; l < 2; l++) {
          const b = `model.layers.${l}.${f.block}.experts`;
          // one input_scale per projection type per layer: the max over experts of their statistics
          const inMax = (leaves: readonly string[]) => Math.max(...Array.from({ length: f.experts }, (_, e) => leaves.map((lf) => stats.get(`${b}.${e}.${lf}.input_amax`)![0]!)).flat());
          const div = format === 'fp8' ? 448 : 2688;
          const gateUpIn = Math.fround(inMax([f.leaves[0], f.leaves[1]]) / div);
          const downIn = Math.fround(inMax([f.leaves[2]]) / div);
          for (let e = 0; e < f.experts; e++) {
            const [g, u, d] = f.leaves.map((lf) => `${b}.${e}.${lf}`) as [string, string, string];
            expect(await scalar(`${g}.input_scale`)).toBe(gateUpIn);
            expect(await scalar(`${u}.input_scale`)).toBe(gateUpIn);
            expect(await scalar(`${d}.input_scale`)).toBe(downIn);
            const wg = await src.tensors.get(`${g}.weight`)!.toFloat32();
            const wu = await src.tensors.get(`${u}.weight`)!.toFloat32();
            const shared = Math.max(amaxOf(wg), amaxOf(wu)); // gate and up of one expert: one weight scale
            for (const [m, w] of [[g, wg], [u, wu], [d, await src.tensors.get(`${d}.weight`)!.toFloat32()]] as const) {
              const amax = m === d ? amaxOf(w) : shared;
              const [N, K] = src.tensors.get(`${m}.weight`)!.shape as [number, number];
              if (format === 'fp8') {
                const ws = Math.fround(amax / 448);
                expect(await scalar(`${m}.weight_scale`), m).toBe(ws);
                expect(Buffer.compare(await ex.tensors.get(`${m}.weight`)!.read(), quantizeFp8Ref(w, ws, 'BF16')), m).toBe(0);
              } else {
                const ws2 = Math.fround(amax / 2688);
                expect(await scalar(`${m}.weight_scale_2`), m).toBe(ws2);
                const q = quantizeNvfp4Ref(w, N, K, ws2);
                expect(Buffer.compare(await ex.tensors.get(`${m}.weight`)!.read(), packNibblesK(q.codes)), m).toBe(0);
                expect(Buffer.compare(await ex.tensors.get(`${m}.weight_scale`)!.read(), q.scales), m).toBe(0);
              }
            }
          }
          // the router is copied unchanged
          const router = `model.layers.${l}.${f.block}.gate.weight`;
          expect(Buffer.compare(await ex.tensors.get(router)!.read(), await src.tensors.get(router)!.read())).toBe(0);
          expect(ex.tensors.has(`model.layers.${l}.${f.block}.gate.weight_scale`)).toBe(false);
        }
        await src.close();
        await ex.close();
      });
    }

    it('a layer in parts (every amax component a part of its own) writes the same bytes as whole layers, fp8, nvfp4 and int4_awq', async () => {
      for (const format of ['fp8', 'nvfp4', 'int4_awq'] as const) {
        const whole = join(tmp, `${family}-${format}-whole`), parted = join(tmp, `${family}-${format}-parts`);
        const seen: string[] = [];
        await exportCheckpoint({ model: dir, format, out: whole, stats, workers: 0, partBytes: Number.MAX_SAFE_INTEGER });
        await exportCheckpoint({ model: dir, format, out: parted, stats, workers: 2, partBytes: 1, onEvent: (e) => e.type === 'unit' && seen.push(`${e.layer}:${e.part ? `${e.part.index}/${e.part.count}` : '-'}`) });
        // each layer in as many parts as it has amax components (an expert's gate and up are one), in order
        const parts = seen.filter((s) => s.startsWith('0:'));
        expect(parts.length, format).toBeGreaterThan(2 * f.experts);
        expect(parts).toEqual(parts.map((_, i) => `0:${i}/${parts.length}`));
        // units come out in source order: every part of a layer before the next layer's, the rest last
        const order = seen.map((s) => Number(s.split(':')[0]));
        expect(order.at(-1), format).toBe(-1);
        expect(order.slice(0, -1), format).toEqual([...order.slice(0, -1)].sort((a, b) => a - b));
        for (const file of (await readdir(whole)).filter((n) => n.endsWith('.safetensors'))) {
          expect(Buffer.compare(await readFile(join(whole, file)), await readFile(join(parted, file))), `${format} ${file}`).toBe(0);
        }
      }
    });

    it('verify fails broken copies: an expert input_scale unlike its siblings, a quantized router, a missing exclude entry', async () => {
      const good = join(tmp, `${family}-nvfp4`);
      const copy = async (name: string) => {
        const d = join(tmp, `${family}-${name}`);
        await cp(good, d, { recursive: true });
        for (const x of await readdir(d)) await chmod(join(d, x), 0o644);
        return d;
      };
      /** Rewrites the export's single shard with `edit` applied to its tensors. */
      const rewrite = async (d: string, edit: (tensors: Map<string, { dtype: string; shape: readonly number[]; bytes: Uint8Array }>) => void) => {
        const ck = await openCheckpoint(d);
        const m = new Map<string, { dtype: string; shape: readonly number[]; bytes: Uint8Array }>();
        for (const t of ck.tensors.values()) m.set(t.name, { dtype: t.dtype, shape: t.shape, bytes: await t.read() });
        await ck.close();
        edit(m);
        const staged = `${d}-staged`;
        const w = await ShardWriter.create(staged, planShards([...m].map(([name, t]) => ({ name, dtype: t.dtype as 'F32', shape: [...t.shape] })), 1e12));
        for (const [name, t] of m) await w.write(name, t.bytes);
        await w.finish();
        await cp(join(staged, 'model.safetensors'), join(d, 'model.safetensors'));
      };
      const b = `model.layers.1.${f.block}`;

      const odd = await copy('odd-input');
      await rewrite(odd, (m) => {
        m.get(`${b}.experts.1.${f.leaves[2]}.input_scale`)!.bytes = new Uint8Array(Float32Array.of(0.123).buffer);
      });
      expect((await verifyExport(odd)).failures.join('\n')).toMatch(new RegExp(`experts\\.1\\.${f.leaves[2]}\\.input_scale = .* differs from .*one input_scale per projection type`));

      const router = await copy('quantized-router');
      await rewrite(router, (m) => {
        m.set(`${b}.gate.weight_scale`, { dtype: 'F32', shape: [], bytes: new Uint8Array(4) });
      });
      expect((await verifyExport(router)).failures.join('\n')).toMatch(new RegExp(`${b.replace(/\./g, '\\.')}\\.gate is quantized, but routers stay unquantized`));

      const noExclude = await copy('no-exclude');
      for (const file of ['hf_quant_config.json', 'config.json']) {
        const p = join(noExclude, file);
        const j = JSON.parse(await readFile(p, 'utf8'));
        const q = file === 'config.json' ? j.quantization_config : j.quantization;
        const key = file === 'config.json' ? 'ignore' : 'exclude_modules';
        q[key] = q[key].filter((x: string) => x !== `${b}.gate`);
        await writeFile(p, JSON.stringify(j));
      }
      expect((await verifyExport(noExclude)).failures.join('\n')).toMatch(new RegExp(`${b.replace(/\./g, '\\.')}\\.gate is stored unquantized but not listed in exclude_modules`));
    });


    it('eval on a .json of token ids: exp(mean next-token NLL over positions 1..T-1) of transformers\' logits', async () => {
      const ids = await inputIds(refPath);
      const logits = (await loadStats(refPath)).get('logits')!;
      const V = logits.length / (ids.length * ids[0]!.length);
      let nll = 0, n = 0;
      ids.forEach((s, b) => {
        for (let t = 0; t + 1 < s.length; t++) {
          const o = (b * s.length + t) * V;
          let m = -Infinity;
          for (let v = 0; v < V; v++) m = Math.max(m, logits[o + v]!);
          let z = 0;
          for (let v = 0; v < V; v++) z += Math.exp(logits[o + v]! - m);
          nll += Math.log(z) + m - logits[o + s[t + 1]!]!;
          n++;
        }
      });
      const file = join(tmp, `${family}-ids.json`);
      await writeFile(file, JSON.stringify(ids));
      const r = await perplexity(dir, file);
      expect(r.tokens).toBe(n);
      expect(Math.abs(r.meanNll - nll / n) / (nll / n)).toBeLessThan(1e-4);
    });

    it('AWQ (int4_awq) with given scales: each projection averaged across experts, then gate and up of each expert; kept per expert, never folded', async () => {
      const { roundBf16 } = await import('../src/codecs/float.js');
      const given: Stats = new Map(stats);
      const pq = (seed: number, K: number) => Float32Array.from({ length: K }, (_, k) => 0.5 + ((k * 7 + seed * 5) % 13) / 8);
      let seed = 0;
      const src = await openCheckpoint(dir);
      for (const l of [0, 1]) for (let e = 0; e < f.experts; e++) for (const leaf of f.leaves) {
        const m = `model.layers.${l}.${f.block}.experts.${e}.${leaf}`;
        given.set(`${m}.pre_quant_scale`, pq(++seed, src.tensors.get(`${m}.weight`)!.shape[1]!));
      }
      await src.close();
      const out = join(tmp, `${family}-int4awq`);
      await exportCheckpoint({ model: dir, format: 'int4_awq', out, stats: given, workers: 0 });
      expect((await verifyExport(out)).failures).toEqual([]);
      const ex = await openCheckpoint(out);
      const mean = (arrs: Float32Array[]) => Float32Array.from(arrs[0]!, (_, k) => roundBf16(Math.fround(arrs.reduce((s, a) => Math.fround(s + a[k]!), 0) / arrs.length)));
      for (const l of [0, 1]) {
        const b = `model.layers.${l}.${f.block}.experts`;
        const per = (leaf: string) => Array.from({ length: f.experts }, (_, e) => given.get(`${b}.${e}.${leaf}.pre_quant_scale`)!.map(roundBf16));
        const g = mean(per(f.leaves[0]!)), u = mean(per(f.leaves[1]!)), d = mean(per(f.leaves[2]!));
        const gu = mean([g, u]);
        for (let e = 0; e < f.experts; e++) {
          for (const [leaf, want] of [[f.leaves[0], gu], [f.leaves[1], gu], [f.leaves[2], d]] as const) {
            const t = ex.tensors.get(`${b}.${e}.${leaf}.pre_quant_scale`);
            expect(t, `${b}.${e}.${leaf}`).toBeDefined();
            expect(Array.from(await t!.toFloat32())).toEqual(Array.from(want));
          }
        }
      }
      await ex.close();
    });
  });
}
