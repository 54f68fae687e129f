/**
 * DeepSeek V3 at real dimensions, stored as the official FP8-block checkpoint (hidden 7168, 128 heads,
 * MLA ranks 1536/512, 256 routed experts of 2048 + 1 shared, vocabulary 129,280): 1 dense + 1 MoE
 * layer, ~16 GB, seeded. Measures calibration (1 x 512 token ids) and the NVFP4 export against the
 * disk floor (O_DIRECT read + O_DIRECT write of the same bytes), with peak RSS.
 */
import { closeSync, existsSync, ftruncateSync, mkdirSync, openSync, readdirSync, rmSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { indexJson, planShards, ShardWriter, type TensorSpec } from '../src/safetensors/writer.js';
import { writeStats } from '../src/calibrate-checkpoint.js';
import { exists } from '../src/safetensors/checkpoint.js';
import { pattern } from './synth.js';
import { evict, timeShell, timeWithRss, GB } from './util.js';
import { execFileSync } from 'node:child_process';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const D = { hidden: 7168, heads: 128, qLora: 1536, kvLora: 512, rope: 64, nope: 128, v: 128, dense: 18432, experts: 256, expertI: 2048, vocab: 129280 };

/**
 * [name, shape, fp8] of every tensor; fp8 ones get a `_scale_inv` [ceil(N/128), ceil(K/128)]. `layers`
 * decoder layers, the first `firstDense` with a dense MLP, then `mtp` multi-token-prediction layers
 * (a MoE decoder layer plus embed_tokens, enorm, hnorm, eh_proj and shared_head, as R1 stores them).
 */
function tensors(layers = 2, firstDense = 1, mtp = 0): [string, number[], boolean][] {
  const { hidden: H, heads: nH, qLora, kvLora, rope, nope, v, dense, experts, expertI: I, vocab } = D;
  const out: [string, number[], boolean][] = [['model.embed_tokens.weight', [vocab, H], false]];
  for (let l = 0; l < layers + mtp; l++) {
    const p = `model.layers.${l}`, a = `${p}.self_attn`;
    if (l >= layers) {
      out.push(
        [`${p}.embed_tokens.weight`, [vocab, H], false], [`${p}.enorm.weight`, [H], false], [`${p}.hnorm.weight`, [H], false],
        [`${p}.eh_proj.weight`, [H, 2 * H], false], [`${p}.shared_head.norm.weight`, [H], false], [`${p}.shared_head.head.weight`, [vocab, H], false],
      );
    }
    out.push(
      [`${p}.input_layernorm.weight`, [H], false],
      [`${a}.q_a_proj.weight`, [qLora, H], true],
      [`${a}.q_a_layernorm.weight`, [qLora], false],
      [`${a}.q_b_proj.weight`, [nH * (nope + rope), qLora], true],
      [`${a}.kv_a_proj_with_mqa.weight`, [kvLora + rope, H], true],
      [`${a}.kv_a_layernorm.weight`, [kvLora], false],
      [`${a}.kv_b_proj.weight`, [nH * (nope + v), kvLora], true],
      [`${a}.o_proj.weight`, [H, nH * v], true],
      [`${p}.post_attention_layernorm.weight`, [H], false],
    );
    if (l < firstDense) {
      out.push([`${p}.mlp.gate_proj.weight`, [dense, H], true], [`${p}.mlp.up_proj.weight`, [dense, H], true], [`${p}.mlp.down_proj.weight`, [H, dense], true]);
    } else {
      out.push([`${p}.mlp.gate.weight`, [experts, H], false], [`${p}.mlp.gate.e_score_correction_bias`, [experts], false]);
      for (let e = 0; e < experts; e++) {
        out.push([`${p}.mlp.experts.${e}.gate_proj.weight`, [I, H], true], [`${p}.mlp.experts.${e}.up_proj.weight`, [I, H], true], [`${p}.mlp.experts.${e}.down_proj.weight`, [H, I], true]);
      }
      out.push([`${p}.mlp.shared_experts.gate_proj.weight`, [I, H], true], [`${p}.mlp.shared_experts.up_proj.weight`, [I, H], true], [`${p}.mlp.shared_experts.down_proj.weight`, [H, I], true]);
    }
  }
  out.push(['model.norm.weight', [H], false], ['lm_head.weight', [vocab, H], false]);
  return out;
}

export async function synthesizeDeepseek(dir: string): Promise<{ dir: string; stats: string }> {
  const stats = join(dir, 'stats.safetensors');
  if (await exists(join(dir, 'config.json'))) return { dir, stats };
  const list = tensors();
  const specs: TensorSpec[] = [];
  for (const [name, shape, fp8] of list) {
    const bias = name.endsWith('e_score_correction_bias');
    specs.push({ name, dtype: fp8 ? 'F8_E4M3' : bias ? 'F32' : 'BF16', shape });
    if (fp8) specs.push({ name: `${name}_scale_inv`, dtype: 'F32', shape: [Math.ceil(shape[0]! / 128), Math.ceil(shape[1]! / 128)] });
  }
  const w = await ShardWriter.create(dir, planShards(specs, 5e9), { overwrite: true });
  const bf16 = pattern(5);
  // e4m3 codes of |x| <= ~240 (never the NaN codes 0x7f / 0xff), a few distinct bytes per 16 MiB
  const codes = new Uint8Array(16 * 2 ** 20);
  let s = 7;
  for (let i = 0; i < codes.length; i++) {
    s = (s * 1103515245 + 12345) >>> 0;
    codes[i] = (s >>> 24) % 0x77 | ((s >>> 16) & 0x80);
  }
  const fill = async (name: string, bytes: number, src: Uint8Array) => {
    for (let at = 0; at < bytes; at += src.length) await w.write(name, src.subarray(0, Math.min(src.length, bytes - at)), at);
  };
  for (const t of specs) {
    const n = t.shape.reduce((a, b) => a * b, 1);
    if (t.name.endsWith('_scale_inv')) await w.write(t.name, new Uint8Array(new Float32Array(n).fill(2 ** -12).buffer));
    else if (t.dtype === 'F8_E4M3') await fill(t.name, n, codes);
    else if (t.dtype === 'F32') await w.write(t.name, new Uint8Array(new Float32Array(n).fill(0.01).buffer));
    else if (t.name.endsWith('norm.weight')) await w.write(t.name, new Uint8Array(new Uint16Array(n).fill(0x3f80).buffer));
    else await fill(t.name, n * 2, bf16);
  }
  await w.writeSideFile('config.json', configJson(2, 1, 0));
  await w.finish();
  await writeStats(stats, statsOf(list));
  return { dir, stats };
}

function configJson(layers: number, firstDense: number, mtp: number): string {
  const { hidden, heads, qLora, kvLora, rope, nope, v, dense, experts, expertI, vocab } = D;
  return JSON.stringify({
    architectures: ['DeepseekV3ForCausalLM'], model_type: 'deepseek_v3', hidden_size: hidden, intermediate_size: dense, moe_intermediate_size: expertI,
    num_hidden_layers: layers, num_attention_heads: heads, num_key_value_heads: heads, q_lora_rank: qLora, kv_lora_rank: kvLora, qk_rope_head_dim: rope,
    qk_nope_head_dim: nope, v_head_dim: v, n_routed_experts: experts, n_shared_experts: 1, num_experts_per_tok: 8, n_group: 8, topk_group: 4,
    routed_scaling_factor: 2.5, norm_topk_prob: true, first_k_dense_replace: firstDense, num_nextn_predict_layers: mtp, vocab_size: vocab, rms_norm_eps: 1e-6,
    rope_theta: 10000, max_position_embeddings: 163840, rope_scaling: { beta_fast: 32, beta_slow: 1, factor: 40, mscale: 1.0, mscale_all_dim: 1.0, original_max_position_embeddings: 4096, type: 'yarn' },
    tie_word_embeddings: false, torch_dtype: 'bfloat16', bos_token_id: 0,
    quantization_config: { activation_scheme: 'dynamic', fmt: 'e4m3', quant_method: 'fp8', weight_block_size: [128, 128] },
  }, null, 2);
}

/** input_amax 3 for every FP8 linear the NVFP4 recipe quantizes (not the MLA projections it keeps). */
function statsOf(list: [string, number[], boolean][]): Map<string, Float32Array> {
  const st = new Map<string, Float32Array>();
  for (const [name, , fp8] of list) if (fp8 && !name.includes('self_attn.q_') && !name.includes('kv_')) st.set(name.replace(/\.weight$/, '.input_amax'), Float32Array.of(3));
  return st;
}

/**
 * DeepSeek R1 at full size (61 layers, the first 3 dense, and its MTP layer) as headers only: each
 * shard's header, then a sparse file of the shard's full length (no data blocks are allocated), so
 * `rxquant plan` reads the real layout of ~690 GB from a few MB of disk.
 */
export async function headersOnlyR1(dir: string): Promise<{ dir: string; stats: string; inputBytes: number }> {
  const list = tensors(61, 3, 1);
  const specs: TensorSpec[] = [];
  for (const [name, shape, fp8] of list) {
    const bias = name.endsWith('e_score_correction_bias');
    specs.push({ name, dtype: fp8 ? 'F8_E4M3' : bias ? 'F32' : 'BF16', shape });
    if (fp8) specs.push({ name: `${name}_scale_inv`, dtype: 'F32', shape: [Math.ceil(shape[0]! / 128), Math.ceil(shape[1]! / 128)] });
  }
  const plan = planShards(specs, 5e9);
  const stats = join(dir, 'stats.safetensors');
  if (!existsSync(join(dir, 'config.json'))) {
    mkdirSync(dir, { recursive: true });
    for (const sh of plan.shards) {
      const fd = openSync(join(dir, sh.file), 'w');
      try {
        writeSync(fd, sh.header);
        ftruncateSync(fd, sh.header.length + sh.dataLength);
      } finally {
        closeSync(fd);
      }
    }
    writeFileSync(join(dir, 'model.safetensors.index.json'), indexJson(plan));
    await writeStats(stats, statsOf(list));
    writeFileSync(join(dir, 'config.json'), configJson(61, 3, 1));
  }
  return { dir, stats, inputBytes: plan.totalSize };
}

const dirBytes = (d: string) => readdirSync(d).filter((f) => f.endsWith('.safetensors') && f.startsWith('model')).reduce((a, f) => a + statSync(join(d, f)).size, 0);

export async function benchDeepseek(dataDir: string): Promise<string[]> {
  const bin = join(ROOT, 'bin', 'rxquant.js');
  const model = join(dataDir, 'deepseek-v3-2l');
  const { stats } = await synthesizeDeepseek(model);
  const ids = join(dataDir, 'ds-ids.json');
  let s = 99;
  writeFileSync(ids, JSON.stringify([Array.from({ length: 512 }, () => ((s = (s * 1103515245 + 12345) >>> 0), s % D.vocab))]));
  const cal = timeWithRss(`node ${bin} calibrate ${model} --calib ${ids} --calib-samples 1 --calib-seq-len 512 -o ${join(dataDir, 'ds-stats.safetensors')}`);
  rmSync(join(dataDir, 'ds-stats.safetensors'), { force: true });
  const out = join(dataDir, 'out-ds-nvfp4');
  rmSync(out, { recursive: true, force: true });
  for (const f of readdirSync(model)) if (f.endsWith('.safetensors')) evict(join(model, f));
  const ex = timeWithRss(`node ${bin} quantize ${model} -f nvfp4 --stats ${stats} -o ${out} --overwrite`);
  const outBytes = dirBytes(out);
  rmSync(out, { recursive: true, force: true });
  for (const f of readdirSync(model)) if (f.endsWith('.safetensors')) evict(join(model, f));
  const read = timeShell(readdirSync(model).filter((f) => f.endsWith('.safetensors')).map((f) => `dd if=${join(model, f)} of=/dev/null bs=8M iflag=direct status=none`).join(' && '));
  const ddFile = join(dataDir, 'dd-floor.bin');
  const write = timeShell(`dd if=/dev/zero of=${ddFile} bs=8M count=${Math.ceil(outBytes / 8388608)} oflag=direct status=none`);
  rmSync(ddFile, { force: true });
  // the full R1, from its headers: what `rxquant plan` says, and this run's export rate scaled to its bytes
  const r1 = await headersOnlyR1(join(dataDir, 'deepseek-r1-headers'));
  const pj = JSON.parse(execFileSync('node', [bin, 'plan', r1.dir, '-f', 'nvfp4', '--stats', r1.stats, '-o', join(dataDir, 'out-r1'), '--json'], { encoding: 'utf8', maxBuffer: 1 << 26 }));
  const perByte = ex.seconds / dirBytes(model);
  const r1Rows = [
    '',
    `DeepSeek R1 at full size (61 layers, 3 dense, + 1 MTP layer), ${(r1.inputBytes / GB).toFixed(0)} GB FP8 in, read from its headers (sparse shards): \`rxquant plan -f nvfp4\` says`,
    '',
    '| | output GB | disk needed GB | peak memory MiB (export) | estimated time min | this run\'s export rate scaled to R1\'s bytes, min |',
    '|---|---|---|---|---|---|',
    `| R1 NVFP4 | ${(pj.outputBytes / GB).toFixed(0)} | ${(pj.diskNeededBytes / GB).toFixed(0)} | ${(pj.peakMemoryBytes / 2 ** 20).toFixed(0)} | ${(pj.estimatedSeconds / 60).toFixed(0)} | ${((perByte * r1.inputBytes) / 60).toFixed(0)} |`,
    '',
    `plan's basis: ${pj.estimateBasis}`,
  ];
  return [
    `DeepSeek V3 dimensions, FP8-block source, 1 dense + 1 MoE layer (256 experts), ${(dirBytes(model) / GB).toFixed(2)} GB`,
    '',
    '| step | wall s | peak RSS MiB | floor s (O_DIRECT read + write) | x floor |',
    '|---|---|---|---|---|',
    `| calibrate 1 x 512 tokens | ${cal.seconds.toFixed(1)} | ${cal.rssMiB.toFixed(0)} | | |`,
    `| export nvfp4 (${(outBytes / GB).toFixed(2)} GB out) | ${ex.seconds.toFixed(1)} | ${ex.rssMiB.toFixed(0)} | ${(read + write).toFixed(1)} | ${(ex.seconds / (read + write)).toFixed(2)} |`,
    ...r1Rows,
  ];
}
