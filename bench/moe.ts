/**
 * Mixture of experts at Qwen3-30B-A3B shapes (hidden 2048, 32 heads, 4 KV heads of 128, 128 experts
 * of 768, top-8, vocabulary 151,936), 2 layers (~3.7 GB bf16), seeded like synth.ts:
 *   - calibration (`rxquant calibrate`, 1 x 512 token ids) peak RSS with 32, 64 and 128 experts:
 *     experts are loaded a group at a time, so it should not grow with their number (target 1 GiB);
 *   - NVFP4 export with statistics against the disk floor (O_DIRECT read + O_DIRECT write of the
 *     same bytes, measured right after each run) and its peak RSS (target 1.15x, 300 MiB).
 */
import { readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { planShards, ShardWriter, type TensorSpec } from '../src/safetensors/writer.js';
import { writeStats } from '../src/calibrate-checkpoint.js';
import { exists } from '../src/safetensors/checkpoint.js';
import { pattern } from './synth.js';
import { evictDir, timeShell, timeWithRss, median, GB } from './util.js';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const QWEN3_30B_A3B = { hidden: 2048, heads: 32, kvHeads: 4, headDim: 128, expertI: 768, topK: 8, vocab: 151936 };

function specs(layers: number, experts: number): TensorSpec[] {
  const { hidden: H, heads, kvHeads, headDim: d, expertI: I, vocab: V } = QWEN3_30B_A3B;
  const out: TensorSpec[] = [{ name: 'model.embed_tokens.weight', dtype: 'BF16', shape: [V, H] }];
  for (let l = 0; l < layers; l++) {
    const p = `model.layers.${l}`;
    out.push(
      { name: `${p}.input_layernorm.weight`, dtype: 'BF16', shape: [H] },
      { name: `${p}.self_attn.q_proj.weight`, dtype: 'BF16', shape: [heads * d, H] },
      { name: `${p}.self_attn.k_proj.weight`, dtype: 'BF16', shape: [kvHeads * d, H] },
      { name: `${p}.self_attn.v_proj.weight`, dtype: 'BF16', shape: [kvHeads * d, H] },
      { name: `${p}.self_attn.o_proj.weight`, dtype: 'BF16', shape: [H, heads * d] },
      { name: `${p}.self_attn.q_norm.weight`, dtype: 'BF16', shape: [d] },
      { name: `${p}.self_attn.k_norm.weight`, dtype: 'BF16', shape: [d] },
      { name: `${p}.post_attention_layernorm.weight`, dtype: 'BF16', shape: [H] },
      { name: `${p}.mlp.gate.weight`, dtype: 'BF16', shape: [experts, H] },
    );
    for (let e = 0; e < experts; e++) {
      out.push(
        { name: `${p}.mlp.experts.${e}.gate_proj.weight`, dtype: 'BF16', shape: [I, H] },
        { name: `${p}.mlp.experts.${e}.up_proj.weight`, dtype: 'BF16', shape: [I, H] },
        { name: `${p}.mlp.experts.${e}.down_proj.weight`, dtype: 'BF16', shape: [H, I] },
      );
    }
  }
  out.push({ name: 'model.norm.weight', dtype: 'BF16', shape: [H] }, { name: 'lm_head.weight', dtype: 'BF16', shape: [V, H] });
  return out;
}

/** A Qwen3-MoE checkpoint at Qwen3-30B-A3B shapes with `experts` experts per layer, plus statistics. */
export async function synthesizeMoe(dir: string, layers: number, experts: number, seed = 3): Promise<{ dir: string; stats: string }> {
  const stats = join(dir, 'stats.safetensors');
  if (await exists(join(dir, 'config.json'))) return { dir, stats };
  const list = specs(layers, experts);
  const w = await ShardWriter.create(dir, planShards(list, 4e9), { overwrite: true });
  const pat = pattern(seed);
  for (const t of list) {
    const bytes = t.shape.reduce((a, b) => a * b, 1) * 2;
    if (t.name.endsWith('norm.weight')) {
      await w.write(t.name, new Uint8Array(new Uint16Array(bytes / 2).fill(0x3f80).buffer));
      continue;
    }
    for (let at = 0, off = ((seed * 7919 + t.name.length * 131) % 1024) * 2; at < bytes; at += pat.length - off, off = 0) {
      const n = Math.min(pat.length - off, bytes - at);
      await w.write(t.name, pat.subarray(off, off + n), at);
    }
  }
  const { hidden: H, heads, kvHeads, headDim, expertI, topK, vocab } = QWEN3_30B_A3B;
  const config = {
    architectures: ['Qwen3MoeForCausalLM'], model_type: 'qwen3_moe', hidden_size: H, intermediate_size: 6144, moe_intermediate_size: expertI,
    num_hidden_layers: layers, num_attention_heads: heads, num_key_value_heads: kvHeads, head_dim: headDim, vocab_size: vocab,
    num_experts: experts, num_experts_per_tok: topK, norm_topk_prob: true, decoder_sparse_step: 1, mlp_only_layers: [],
    rms_norm_eps: 1e-6, rope_theta: 1000000.0, tie_word_embeddings: false, torch_dtype: 'bfloat16', bos_token_id: 151643, max_position_embeddings: 40960,
  };
  await w.writeSideFile('config.json', JSON.stringify(config, null, 2));
  await w.finish();
  const s = new Map<string, Float32Array>();
  for (let l = 0; l < layers; l++) {
    const p = `model.layers.${l}`;
    for (const m of ['q_proj', 'k_proj', 'v_proj', 'o_proj']) s.set(`${p}.self_attn.${m}.input_amax`, Float32Array.of(4 + ((l * 7 + m.length) % 13)));
    for (let e = 0; e < experts; e++) for (const m of ['gate_proj', 'up_proj', 'down_proj']) s.set(`${p}.mlp.experts.${e}.${m}.input_amax`, Float32Array.of(2 + ((e * 5 + m.length) % 11)));
  }
  await writeStats(stats, s);
  return { dir, stats };
}

function dirBytes(dir: string): number {
  return readdirSync(dir).filter((f) => f.endsWith('.safetensors') && f.startsWith('model')).reduce((a, f) => a + statSync(join(dir, f)).size, 0);
}

export async function benchMoe(dataDir: string, repeats = 3): Promise<string[]> {
  const bin = join(ROOT, 'bin', 'rxquant.js');
  const ids = join(dataDir, 'moe-ids.json');
  let s = 12345;
  const sample = Array.from({ length: 512 }, () => ((s = (s * 1103515245 + 12345) >>> 0), s % QWEN3_30B_A3B.vocab));
  writeFileSync(ids, JSON.stringify([sample]));
  const rows = [
    'Qwen3-30B-A3B shapes (hidden 2048, experts of 768, top-8, vocabulary 151,936), 2 layers',
    '',
    '| experts per layer | checkpoint GB | calibration 1 x 512 tokens: peak RSS MiB | wall s |',
    '|---|---|---|---|',
  ];
  for (const experts of [32, 64, 128]) {
    const model = join(dataDir, `qwen3moe-${experts}e`);
    await synthesizeMoe(model, 2, experts);
    const out = join(dataDir, 'moe-stats.safetensors');
    const r = timeWithRss(`node ${bin} calibrate ${model} --calib ${ids} --calib-samples 1 --calib-seq-len 512 -o ${out}`);
    rmSync(out, { force: true });
    rows.push(`| ${experts} | ${(dirBytes(model) / GB).toFixed(2)} | ${r.rssMiB.toFixed(0)} | ${r.seconds.toFixed(1)} |`);
  }
  const model = join(dataDir, 'qwen3moe-128e');
  const { stats } = await synthesizeMoe(model, 2, 128);
  const out = join(dataDir, 'out-moe-nvfp4');
  const runs: { rx: number; rss: number; read: number; write: number; durable: number; outBytes: number }[] = [];
  for (let i = 0; i < repeats; i++) {
    rmSync(out, { recursive: true, force: true });
    evictDir(model);
    const r = timeWithRss(`node ${bin} quantize ${model} -f nvfp4 --stats ${stats} -o ${out} --overwrite`);
    const outBytes = dirBytes(out);
    rmSync(out, { recursive: true, force: true });
    evictDir(model);
    const read = timeShell(readdirSync(model).filter((f) => f.endsWith('.safetensors')).map((f) => `dd if=${join(model, f)} of=/dev/null bs=8M iflag=direct status=none`).join(' && '));
    const ddFile = join(dataDir, 'dd-floor.bin');
    const write = timeShell(`dd if=/dev/zero of=${ddFile} bs=8M count=${Math.ceil(outBytes / 8388608)} oflag=direct status=none`);
    rmSync(ddFile, { force: true });
    // the write made durable (fsync), as rxquant syncs its shards before publishing the export
    const durable = timeShell(`dd if=/dev/zero of=${ddFile} bs=8M count=${Math.ceil(outBytes / 8388608)} oflag=direct conv=fsync status=none`);
    rmSync(ddFile, { force: true });
    runs.push({ rx: r.seconds, rss: r.rssMiB, read, write, durable, outBytes });
  }
  const m = (f: (r: (typeof runs)[number]) => number) => median(runs.map(f));
  rows.push(
    '',
    '| export | output GB | O_DIRECT read s | O_DIRECT write s | floor s | rxquant s | x floor (each run) | O_DIRECT write + fsync s | x durable floor | peak RSS MiB |',
    '|---|---|---|---|---|---|---|---|---|---|',
    `| nvfp4, 128 experts | ${(runs[0]!.outBytes / GB).toFixed(2)} | ${m((r) => r.read).toFixed(2)} | ${m((r) => r.write).toFixed(2)} | ${m((r) => r.read + r.write).toFixed(2)} | ${m((r) => r.rx).toFixed(2)} | ${m((r) => r.rx / (r.read + r.write)).toFixed(2)} (${runs.map((r) => (r.rx / (r.read + r.write)).toFixed(2)).join(', ')}) | ${m((r) => r.durable).toFixed(2)} | ${m((r) => r.rx / (r.read + r.durable)).toFixed(2)} | ${Math.max(...runs.map((r) => r.rss)).toFixed(0)} |`,
    '',
    `medians of ${repeats}; the floor is measured right after each export, cold (files evicted from the page cache); the durable floor writes with fsync, as rxquant syncs its shards before the rename that publishes the export`,
  );
  return rows;
}
