/** Reader throughput: the safetensors reader into a reused buffer vs `cat` of the same file, cold and warm. */
import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { SafetensorsFile } from '../src/safetensors/file.js';
import { planShards, ShardWriter } from '../src/safetensors/writer.js';
import { evict, timeShell, median, GB } from './util.js';

export async function ensureBigFile(dir: string, bytes: number): Promise<string> {
  const out = join(dir, `read-${bytes}`);
  const file = join(out, 'model.safetensors');
  if (existsSync(file)) return file;
  // 64 bf16 tensors of random-ish bytes
  const n = 64;
  const per = Math.floor(bytes / n / 2) * 2;
  const plan = planShards(Array.from({ length: n }, (_, i) => ({ name: `t${i}`, dtype: 'BF16' as const, shape: [per / 2] })), Number.MAX_SAFE_INTEGER);
  const w = await ShardWriter.create(out, plan, { overwrite: true });
  const buf = new Uint8Array(per);
  let x = 12345;
  for (let i = 0; i < buf.length; i += 4) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    buf[i] = x & 0xff; buf[i + 1] = (x >>> 8) & 0x3f; buf[i + 2] = (x >>> 16) & 0xff; buf[i + 3] = (x >>> 24) & 0x3f;
  }
  for (let i = 0; i < n; i++) await w.write(`t${i}`, buf);
  await w.finish();
  return file;
}

async function readAllTensors(path: string, chunk: number): Promise<number> {
  const f = await SafetensorsFile.open(path);
  const buf = new Uint8Array(chunk);
  let total = 0;
  for (const t of f.tensors.values()) {
    for (let at = 0; at < t.byteLength; at += chunk) {
      const r = await t.readBytes(at, Math.min(t.byteLength, at + chunk), buf);
      total += r.length;
    }
  }
  await f.close();
  return total;
}

export async function benchRead(dataDir: string, bytes = 2 * GB): Promise<string[]> {
  const file = await ensureBigFile(dataDir, bytes);
  const size = statSync(file).size;
  const rows: string[] = [];
  const runs = 3;
  const cold = { cat: [] as number[], rx: [] as number[] };
  const warm = { cat: [] as number[], rx: [] as number[] };
  for (let i = 0; i < runs; i++) {
    evict(file);
    cold.cat.push(timeShell(`cat ${file} > /dev/null`));
    evict(file);
    let t = process.hrtime.bigint();
    await readAllTensors(file, 16 * 2 ** 20);
    cold.rx.push(Number(process.hrtime.bigint() - t) / 1e9);
    warm.cat.push(timeShell(`cat ${file} > /dev/null`));
    t = process.hrtime.bigint();
    await readAllTensors(file, 16 * 2 ** 20);
    warm.rx.push(Number(process.hrtime.bigint() - t) / 1e9);
  }
  const gbs = (s: number) => (size / s / GB).toFixed(2);
  rows.push(`| read ${(size / GB).toFixed(2)} GB, cold | cat ${gbs(median(cold.cat))} GB/s | rxquant reader ${gbs(median(cold.rx))} GB/s | ratio ${(median(cold.cat) / median(cold.rx)).toFixed(2)}x of cat |`);
  rows.push(`| read ${(size / GB).toFixed(2)} GB, warm | cat ${gbs(median(warm.cat))} GB/s | rxquant reader ${gbs(median(warm.rx))} GB/s | ratio ${(median(warm.cat) / median(warm.rx)).toFixed(2)}x of cat |`);
  return rows;
}
