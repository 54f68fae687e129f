/** `rxquant inspect`: what a checkpoint holds. */
import { readdir, readFile, stat } from 'node:fs/promises';
import { openDcp, resolveTorchDist } from './sources/dcp.js';
import { join, dirname } from 'node:path';
import { openCheckpoint } from './safetensors/checkpoint.js';
import { formatBytes } from './safetensors/size.js';

export interface InspectReport {
  path: string;
  tensors: { name: string; dtype: string; shape: readonly number[]; bytes: number; shard: string }[];
  totals: Record<string, { tensors: number; bytes: number }>;
  shards: number;
  architecture?: { modelType: unknown; architectures: unknown; layers: unknown; hidden: unknown; medusa?: unknown; eagle?: unknown };
  quantization?: unknown;
  /** A Megatron-Core torch_dist checkpoint: its tensors are the stored keys (global shapes), plus bytes items. */
  torchDist?: { bytesItems: number };
}

/** A Megatron-Core torch_dist folder (save folder, iter_* folder or NeMo 2 folder) rather than safetensors. */
async function isTorchDist(path: string): Promise<boolean> {
  const has = (p: string) => stat(join(path, p)).then(() => true, () => false);
  if (!(await stat(path).then((s) => s.isDirectory(), () => false))) return false;
  return (await has('latest_checkpointed_iteration.txt')) || (await has('.metadata')) || (await has('weights/.metadata'));
}

/** The keys of a torch_dist checkpoint as stored (global shapes; `--hf-config` reads them as HF tensors). */
async function inspectTorchDist(path: string): Promise<InspectReport> {
  const dir = await resolveTorchDist(path);
  const dcp = await openDcp(dir);
  try {
    const tensors = [...dcp.tensors.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0)).map((t) => ({ name: t.name, dtype: t.dtype, shape: t.shape, bytes: t.byteLength, shard: 'torch_dist' }));
    const totals: InspectReport['totals'] = {};
    for (const t of tensors) {
      const e = (totals[t.dtype] ??= { tensors: 0, bytes: 0 });
      e.tensors++;
      e.bytes += t.bytes;
    }
    const files = (await readdir(dir)).filter((f) => f.endsWith('.distcp')).length;
    return { path: dir, tensors, totals, shards: files, torchDist: { bytesItems: dcp.bytesKeys.length } };
  } finally {
    await dcp.close();
  }
}

export async function inspect(path: string): Promise<InspectReport> {
  if (await isTorchDist(path)) return inspectTorchDist(path);
  const ck = await openCheckpoint(path);
  try {
    const tensors = [...ck.tensors.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0)).map((t) => ({ name: t.name, dtype: t.dtype, shape: t.shape, bytes: t.byteLength, shard: ck.weightMap.get(t.name)! }));
    const totals: InspectReport['totals'] = {};
    for (const t of tensors) {
      const e = (totals[t.dtype] ??= { tensors: 0, bytes: 0 });
      e.tensors++;
      e.bytes += t.bytes;
    }
    const dir = (await stat(path)).isDirectory() ? path : dirname(path);
    const report: InspectReport = { path, tensors, totals, shards: ck.files.length };
    const cfg = await readJsonIfAny(join(dir, 'config.json'));
    if (cfg) report.architecture = { modelType: cfg.model_type, architectures: cfg.architectures, layers: cfg.num_hidden_layers, hidden: cfg.hidden_size, ...(cfg.medusa ? { medusa: cfg.medusa } : {}), ...(cfg.eagle_config ? { eagle: cfg.eagle_config } : {}) };
    const hq = await readJsonIfAny(join(dir, 'hf_quant_config.json'));
    if (hq) report.quantization = hq.quantization;
    return report;
  } finally {
    await ck.close();
  }
}

async function readJsonIfAny(p: string): Promise<any> {
  try {
    return JSON.parse(await readFile(p, 'utf8'));
  } catch {
    return undefined;
  }
}

export function formatInspect(r: InspectReport, maxRows = Infinity): string {
  const lines: string[] = [];
  lines.push(`${r.path}: ${r.tensors.length} tensors in ${r.shards} ${r.torchDist ? `.distcp file(s) (Megatron-Core torch_dist; ${r.torchDist.bytesItems} bytes items; quantize, plan and calibrate read it with --hf-config <HF model folder>)` : 'shard(s)'}`);
  if (r.architecture) {
    const a = r.architecture;
    lines.push(`architecture: ${a.modelType} ${JSON.stringify(a.architectures)}, ${a.layers} layers, hidden ${a.hidden}${a.medusa ? `, Medusa heads ${JSON.stringify(a.medusa)}` : ''}${a.eagle ? `, EAGLE draft ${JSON.stringify(a.eagle)}${r.quantization ? '' : ' (quantize it with --base TARGET)'}` : ''}`);
  }
  if (r.quantization) {
    const q = r.quantization as Record<string, unknown>;
    lines.push(
      `quantization: ${q.quant_algo}${q.group_size ? ` (group ${q.group_size})` : ''}, kv cache ${q.kv_cache_quant_algo ?? 'none'}, ` +
        `excluded: ${Array.isArray(q.exclude_modules) ? q.exclude_modules.join(', ') || '(none)' : '?'}`,
    );
  }
  lines.push('');
  const w = Math.min(70, Math.max(...r.tensors.map((t) => t.name.length)));
  const rows = r.tensors.slice(0, maxRows);
  for (const t of rows) lines.push(`${t.name.padEnd(w)}  ${t.dtype.padEnd(7)}  ${`[${t.shape.join(', ')}]`.padEnd(18)}  ${formatBytes(t.bytes)}`);
  if (rows.length < r.tensors.length) lines.push(`... ${r.tensors.length - rows.length} more (use --all)`);
  lines.push('');
  lines.push('totals:');
  let all = 0;
  for (const [d, e] of Object.entries(r.totals).sort()) {
    lines.push(`  ${d.padEnd(8)} ${String(e.tensors).padStart(6)} tensors  ${formatBytes(e.bytes)}`);
    all += e.bytes;
  }
  lines.push(`  ${'all'.padEnd(8)} ${String(r.tensors.length).padStart(6)} tensors  ${formatBytes(all)}`);
  return lines.join('\n');
}
