/**
 * Tensor-source views against results materialized independently: the FP8-block dequantization
 * against the fixture's `dequant_golden.safetensors` (made with numpy by the fixture's author, one of
 * them with its scale in the other shard), and expert slices, transposes and row ranges of Llama 4's
 * fused 3-D experts against plain indexing of the whole tensor (numpy's `W[e].T[r0:r1]`).
 */
import { describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { openCheckpoint } from '../src/safetensors/checkpoint.js';
import { expertSlice, fp8BlockDequant, rowRange, transposed, checkedNumel } from '../src/sources/views.js';
import { directReadSpan } from '../src/safetensors/file.js';
import { readAll, synthetic, u16 } from './helpers.js';
import { expandFp8Block } from '../src/kernels/tasks.js';
import { decodeToFloat32 } from '../src/codecs/float.js';

describe('fp8BlockDequant (DeepSeek FP8 weight + 128x128 weight_scale_inv -> BF16)', () => {
  it('equals the fixture golden bytes, ragged tiles and a scale stored in the other shard included', async () => {
    const dir = synthetic('deepseek_v3_fp8');
    const golden = await readAll(join(dir, 'dequant_golden.safetensors'));
    const ck = await openCheckpoint(dir);
    try {
      expect(ck.weightMap.get('model.layers.1.mlp.experts.3.down_proj.weight')).not.toBe(ck.weightMap.get('model.layers.1.mlp.experts.3.down_proj.weight_scale_inv'));
      for (const [name, g] of golden) {
        const v = fp8BlockDequant(ck.tensors.get(name)!, ck.tensors.get(`${name}_scale_inv`)!);
        expect(v.dtype).toBe('BF16');
        expect(v.shape).toEqual(g.shape);
        expect(Buffer.compare(await v.read(), g.bytes), name).toBe(0);
        // any row range and any byte range agree with the whole
        const whole = await v.read();
        for (const [r0, r1] of [[0, 1], [60, 70], [100, 140], [127, 129], [v.rows - 3, v.rows]].filter(([, b]) => b! <= v.rows) as [number, number][]) {
          expect(Buffer.compare(await v.readRows(r0, r1), whole.subarray(r0 * v.rowBytes, r1 * v.rowBytes))).toBe(0);
        }
        expect(Buffer.compare(await v.readBytes(3, 1001), whole.subarray(3, 1001))).toBe(0);
        const aligned = new Uint8Array(directReadSpan(500));
        expect(Buffer.compare(await v.readBytesDirect(10, 510, aligned), whole.subarray(10, 510))).toBe(0);
      }
    } finally {
      await ck.close();
    }
  });

  it('every FP8 weight of the fixture dequantizes within FP8 resolution of the BF16 source it was made from', async () => {
    const fp8 = await openCheckpoint(synthetic('deepseek_v3_fp8'));
    const bf16 = await openCheckpoint(synthetic('deepseek_v3'));
    try {
      let n = 0;
      for (const [name, t] of fp8.tensors) {
        if (t.dtype !== 'F8_E4M3' || !bf16.tensors.has(name)) continue;
        const got = await fp8BlockDequant(t, fp8.tensors.get(`${name}_scale_inv`)!).toFloat32();
        const src = await bf16.tensors.get(name)!.toFloat32();
        let max = 0, err = 0;
        for (let i = 0; i < src.length; i++) {
          max = Math.max(max, Math.abs(src[i]!));
          err = Math.max(err, Math.abs(got[i]! - src[i]!));
        }
        expect(err / max, name).toBeLessThanOrEqual(0.038); // the fixture README: at most 3.8% of max|W|
        n++;
      }
      expect(n).toBe(40); // layers 0 and 1: 5 MLA projections, 3 dense MLP, 8 x 3 expert and 3 shared-expert linears
    } finally {
      await fp8.close();
      await bf16.close();
    }
  });

  it('the kernel workers\' in-place expansion of FP8 codes gives the view\'s bytes, for chunks that start inside a tile', async () => {
    const ck = await openCheckpoint(synthetic('deepseek_v3_fp8'));
    try {
      for (const name of ['model.layers.0.self_attn.q_b_proj.weight', 'model.layers.0.mlp.down_proj.weight']) {
        const q = ck.tensors.get(name)!, s = ck.tensors.get(`${name}_scale_inv`)!;
        const view = fp8BlockDequant(q, s);
        const [N, K] = q.shape as [number, number];
        for (const [r0, r1] of [[0, N], [100, N], [37, 41]] as const) {
          const buf = new Uint8Array((r1 - r0) * K * 2);
          await q.readRows(r0, r1, buf);
          const scales = decodeToFloat32(await s.readRows(Math.floor(r0 / 128), Math.ceil(r1 / 128)), 'F32');
          expandFp8Block({ src: buf, dtype: 'BF16', row0: r0, rows: r1 - r0, K, ops: [], fp8Source: { scales, BK: Math.ceil(K / 128) } });
          expect(Buffer.compare(buf, await view.readRows(r0, r1)), `${name} [${r0}, ${r1})`).toBe(0);
        }
      }
    } finally {
      await ck.close();
    }
  });

  it('refuses a scale of the wrong shape or dtype, naming both tensors', async () => {
    const ck = await openCheckpoint(synthetic('deepseek_v3_fp8'));
    try {
      const q = ck.tensors.get('model.layers.0.self_attn.q_b_proj.weight')!;
      const wrong = ck.tensors.get('model.layers.0.mlp.down_proj.weight_scale_inv')!;
      expect(() => fp8BlockDequant(q, wrong)).toThrow(/weight_scale_inv" is F32 \[1, 2\]; the 128x128 block scales of "model.layers.0.self_attn.q_b_proj.weight" \[192, 64\] must be F32 \[2, 1\]/);
      expect(() => fp8BlockDequant(ck.tensors.get('model.embed_tokens.weight')!, wrong)).toThrow(/is BF16 \[512, 128\]; an FP8-block weight is F8_E4M3/);
    } finally {
      await ck.close();
    }
  });
});

describe('expert slices, transposes and row ranges (Llama 4 fused experts [E, H, 2I])', () => {
  it('gate and up of expert e read as [I, H] rows equal W[e].T[0:I] and W[e].T[I:2I]', async () => {
    const ck = await openCheckpoint(synthetic('llama4_text'));
    try {
      const t = ck.tensors.get('model.layers.1.feed_forward.experts.gate_up_proj')!;
      const [E, H, I2] = t.shape as [number, number, number];
      const I = I2 / 2;
      const all = u16(await t.read()); // plain indexing of the whole tensor
      for (let e = 0; e < E; e++) {
        const wt = transposed(expertSlice(t, e, `experts.${e}.gate_up_proj`));
        expect(wt.shape).toEqual([I2, H]);
        for (const [half, r0] of [['gate', 0], ['up', I]] as const) {
          const v = rowRange(wt, r0, r0 + I, `experts.${e}.${half}_proj`);
          expect(v.shape).toEqual([I, H]);
          const got = u16(await v.read());
          const want = new Uint16Array(I * H);
          for (let r = 0; r < I; r++) for (let h = 0; h < H; h++) want[r * H + h] = all[e * H * I2 + h * I2 + (r0 + r)]!;
          expect(Buffer.compare(Buffer.from(got.buffer), Buffer.from(want.buffer)), `${e} ${half}`).toBe(0);
          // a chunk of rows, into a caller's buffer at an offset
          const buf = new Uint8Array(64 + 5 * v.rowBytes);
          const part = await v.readRows(7, 12, buf.subarray(64));
          expect(part.byteOffset).toBe(64);
          expect(Buffer.compare(part, Buffer.from(want.buffer, 7 * H * 2, 5 * H * 2))).toBe(0);
        }
      }
    } finally {
      await ck.close();
    }
  });

  it('an expert slice is a byte range of its file: O_DIRECT reads pass through', async () => {
    const ck = await openCheckpoint(synthetic('llama4_text'));
    try {
      const t = ck.tensors.get('model.layers.0.feed_forward.experts.down_proj')!;
      const s = expertSlice(t, 2);
      const whole = await t.read();
      const aligned = new Uint8Array(directReadSpan(s.byteLength));
      const got = await s.readBytesDirect(0, s.byteLength, aligned);
      expect(Buffer.compare(got, whole.subarray(2 * t.rowBytes, 3 * t.rowBytes))).toBe(0);
      expect(s.origin).toContain('model.safetensors');
    } finally {
      await ck.close();
    }
  });

  it('bad ranges and shapes are errors, and sizes are checked against 2^53', async () => {
    const ck = await openCheckpoint(synthetic('llama4_text'));
    try {
      const t = ck.tensors.get('model.layers.0.feed_forward.experts.down_proj')!;
      expect(() => expertSlice(t, 4)).toThrow(/row range \[4, 5\) outside \[0, 4\)/);
      expect(() => transposed(t)).toThrow(/needs 2 dimensions/);
      await expect(rowRange(expertSlice(t, 0), 0, 8).readRows(3, 9)).rejects.toThrow(/row range \[3, 9\) outside \[0, 8\)/);
      expect(() => checkedNumel([2 ** 27, 2 ** 27], 'x')).toThrow(/past 2\^53/);
    } finally {
      await ck.close();
    }
  });
});
