/**
 * Synthetic checkpoints with real Llama-3.1-8B shapes (hidden 4096, intermediate 14336, 32 heads,
 * 8 KV heads, vocab 128256), bf16, any number of layers, seeded, written as real sharded safetensors
 * with config.json (5 GB shards like the Hub's), plus a statistics file so formats with activation
 * scales run without calibration.
 *
 * Usage: node dist/bench/synth.js <out-dir> <layers> [seed]
 */
import { copyFileSync, mkdirSync, readdirSync, rmSync, symlinkSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { planShards, ShardWriter, type TensorSpec } from '../src/safetensors/writer.js';
import { writeStats } from '../src/calibrate-checkpoint.js';
import { exists } from '../src/safetensors/checkpoint.js';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

export const LLAMA_8B = { hidden: 4096, intermediate: 14336, heads: 32, kvHeads: 8, headDim: 128, vocab: 128256 };

function specs(layers: number): TensorSpec[] {
  const { hidden: H, intermediate: I, heads, kvHeads, headDim: d, vocab: V } = LLAMA_8B;
  const out: TensorSpec[] = [{ name: 'model.embed_tokens.weight', dtype: 'BF16', shape: [V, H] }];
  for (let l = 0; l < layers; l++) {
    const p = `model.layers.${l}`;
    out.push(
      { name: `${p}.input_layernorm.weight`, dtype: 'BF16', shape: [H] },
      { name: `${p}.self_attn.q_proj.weight`, dtype: 'BF16', shape: [heads * d, H] },
      { name: `${p}.self_attn.k_proj.weight`, dtype: 'BF16', shape: [kvHeads * d, H] },
      { name: `${p}.self_attn.v_proj.weight`, dtype: 'BF16', shape: [kvHeads * d, H] },
      { name: `${p}.self_attn.o_proj.weight`, dtype: 'BF16', shape: [H, heads * d] },
      { name: `${p}.post_attention_layernorm.weight`, dtype: 'BF16', shape: [H] },
      { name: `${p}.mlp.gate_proj.weight`, dtype: 'BF16', shape: [I, H] },
      { name: `${p}.mlp.up_proj.weight`, dtype: 'BF16', shape: [I, H] },
      { name: `${p}.mlp.down_proj.weight`, dtype: 'BF16', shape: [H, I] },
    );
  }
  out.push({ name: 'model.norm.weight', dtype: 'BF16', shape: [H] }, { name: 'lm_head.weight', dtype: 'BF16', shape: [V, H] });
  return out;
}

/** 16 MiB of bf16 values ~ N(0, 0.02) with rare outliers, from a seeded generator; reused cyclically. */
export function pattern(seed: number): Uint8Array {
  const n = 8 * 2 ** 20;
  const u16 = new Uint16Array(n);
  const f = new Float32Array(1);
  const u = new Uint32Array(f.buffer);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0;
    // sum of 4 uniforms ~ normal
    const a = (s & 0xff) + ((s >>> 8) & 0xff) + ((s >>> 16) & 0xff) + (s >>> 24) - 510;
    f[0] = (a / 147.8) * 0.02 * ((s & 0x3ff) === 7 ? 40 : 1);
    u16[i] = (u[0]! + 0x7fff + ((u[0]! >>> 16) & 1)) >>> 16;
  }
  return new Uint8Array(u16.buffer);
}

export async function synthesize(dir: string, layers: number, seed = 1): Promise<{ dir: string; stats: string }> {
  const stats = join(dir, 'stats.safetensors');
  if (await exists(join(dir, 'config.json'))) return { dir, stats };
  const list = specs(layers);
  const plan = planShards(list, 2e9);
  const w = await ShardWriter.create(dir, plan, { overwrite: true });
  const pat = pattern(seed);
  for (const t of list) {
    const bytes = t.shape.reduce((a, b) => a * b, 1) * 2;
    if (t.name.endsWith('norm.weight')) {
      const ones = new Uint16Array(bytes / 2).fill(0x3f80);
      await w.write(t.name, new Uint8Array(ones.buffer));
      continue;
    }
    for (let at = 0, off = (seed * 7919 + t.name.length * 131) % 1024 * 2; at < bytes; at += pat.length - off, off = 0) {
      const n = Math.min(pat.length - off, bytes - at);
      await w.write(t.name, pat.subarray(off, off + n), at);
    }
  }
  const { hidden: H, intermediate: I, heads, kvHeads, headDim, vocab } = LLAMA_8B;
  const config = {
    architectures: ['LlamaForCausalLM'], model_type: 'llama', hidden_size: H, intermediate_size: I, num_hidden_layers: layers,
    num_attention_heads: heads, num_key_value_heads: kvHeads, head_dim: headDim, vocab_size: vocab, rms_norm_eps: 1e-5,
    rope_theta: 500000.0, rope_scaling: { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 8192, rope_type: 'llama3' },
    tie_word_embeddings: false, torch_dtype: 'bfloat16', bos_token_id: 128000, eos_token_id: 128001, max_position_embeddings: 131072,
  };
  await w.writeSideFile('config.json', JSON.stringify(config, null, 2));
  await w.finish();
  // activation statistics: plausible amax values so FP8/NVFP4 input scales exist
  const s = new Map<string, Float32Array>();
  for (let l = 0; l < layers; l++) {
    for (const m of ['self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj', 'self_attn.o_proj', 'mlp.gate_proj', 'mlp.up_proj', 'mlp.down_proj']) {
      s.set(`model.layers.${l}.${m}.input_amax`, Float32Array.of(4 + ((l * 7 + m.length) % 13)));
    }
    s.set(`model.layers.${l}.self_attn.k_amax`, Float32Array.of(12));
    s.set(`model.layers.${l}.self_attn.v_amax`, Float32Array.of(3));
  }
  await writeStats(stats, s);
  return { dir, stats };
}

/**
 * `dir` made anew as the synthetic model `model` with the bundled stories260K tokenizer beside it
 * (its files linked; token ids < 512 are valid in the 128,256-entry vocabulary), for commands that
 * tokenize calibration text.
 */
export function withBundledTokenizer(model: string, dir: string): string {
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir);
  for (const f of readdirSync(model)) symlinkSync(join(model, f), join(dir, f));
  for (const f of ['tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json']) copyFileSync(join(ROOT, 'assets', 'stories260K', f), join(dir, f));
  return dir;
}

if (process.argv[1]?.endsWith('synth.js')) {
  const [dir, layers, seed] = process.argv.slice(2);
  const t = Date.now();
  await synthesize(dir!, Number(layers), seed ? Number(seed) : 1);
  process.stdout.write(`wrote ${dir} in ${((Date.now() - t) / 1000).toFixed(1)} s\n`);
}
