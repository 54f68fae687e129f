/**
 * Calibration text from a Hugging Face Hub dataset, as ModelOpt users get theirs:
 *
 *   hf://datasets/ORG/NAME[@REVISION][?config=C&split=S&field=F]
 *
 * The dataset's parquet files (those under `C/` when a config is given, whose name or folder is the
 * split, `train` by default) are fetched one at a time through @huggingface/hub into the standard
 * cache (HF_HUB_CACHE / HF_HOME, HF_TOKEN, HF_ENDPOINT) until enough records are read. A record's
 * text is its `field` column, else the first of `text`, `article` (cnn_dailymail) and `messages`
 * (chat datasets: the turns' `content` joined by "\n", without a chat template, as ModelOpt's
 * dataset_utils joins Nemotron's). HF_HUB_OFFLINE=1 refuses before any request.
 */
// loaded on use (~55 ms): only a calibration set from the Hub needs it
const hubLibrary = () => import('@huggingface/hub');
import { CalibrationDataError } from '../errors.js';
import { hubCacheDir, quietDownload } from '../hub.js';

export interface HubDatasetRef {
  repo: string;
  revision: string;
  config?: string;
  split: string;
  field?: string;
}

const PREFIX = 'hf://datasets/';

/** The reference a `--calib` value names, or undefined when it is not an `hf://datasets/` one. */
export function parseHubDataset(s: string): HubDatasetRef | undefined {
  if (!s.startsWith(PREFIX)) return undefined;
  const [path, query = ''] = s.slice(PREFIX.length).split('?', 2) as [string, string?];
  const m = /^([A-Za-z0-9][\w.-]*\/[\w.-]+)(?:@([\w./-]+))?$/.exec(path);
  if (!m) throw new CalibrationDataError(`${s}: expected hf://datasets/ORG/NAME[@REVISION][?config=C&split=S&field=F]`);
  const params = new URLSearchParams(query);
  for (const k of params.keys()) if (!['config', 'split', 'field'].includes(k)) throw new CalibrationDataError(`${s}: unknown option "${k}" (config, split, field)`);
  return { repo: m[1]!, revision: m[2] ?? 'main', config: params.get('config') ?? undefined, split: params.get('split') ?? 'train', field: params.get('field') ?? undefined };
}

export function formatHubDataset(r: HubDatasetRef): string {
  const q = new URLSearchParams();
  if (r.config) q.set('config', r.config);
  q.set('split', r.split);
  if (r.field) q.set('field', r.field);
  return `${PREFIX}${r.repo}${r.revision === 'main' ? '' : `@${r.revision}`}?${q}`;
}

/** Whether a parquet file of the dataset belongs to the config and split asked for. */
export function parquetMatches(path: string, config: string | undefined, split: string): boolean {
  if (!path.endsWith('.parquet')) return false;
  const parts = path.split('/');
  if (config !== undefined && parts[0] !== config) return false;
  const base = parts[parts.length - 1]!;
  return parts.slice(0, -1).includes(split) || base.startsWith(`${split}-`) || base.startsWith(`${split}.`);
}

export interface HubDatasetOptions {
  hubUrl?: string;
  token?: string;
  cacheDir?: string;
  onFile?: (path: string, size: number) => void;
}

/** The first `max` non-empty texts of the dataset's split. */
export async function hubDatasetTexts(ref: HubDatasetRef, max: number, o: HubDatasetOptions = {}): Promise<string[]> {
  const name = formatHubDataset(ref);
  if (process.env.HF_HUB_OFFLINE === '1') throw new CalibrationDataError(`${name}: HF_HUB_OFFLINE=1, the Hub is not used; pass a local --calib file`);
  const common = {
    repo: { type: 'dataset' as const, name: ref.repo },
    revision: ref.revision,
    hubUrl: o.hubUrl ?? process.env.HF_ENDPOINT,
    accessToken: o.token ?? process.env.HF_TOKEN,
  };
  const files: { path: string; size: number }[] = [];
  try {
    const { listFiles } = await hubLibrary();
    for await (const f of listFiles({ ...common, recursive: true })) if (f.type === 'file' && f.path.endsWith('.parquet')) files.push({ path: f.path, size: f.size });
  } catch (e) {
    throw new CalibrationDataError(`${name}: cannot list the dataset on the Hub (${(e as Error).message}); private or gated datasets need HF_TOKEN`);
  }
  const chosen = files.filter((f) => parquetMatches(f.path, ref.config, ref.split)).sort((a, b) => (a.path < b.path ? -1 : 1));
  if (chosen.length === 0) {
    const have = files.slice(0, 8).map((f) => f.path).join(', ');
    throw new CalibrationDataError(`${name}: no parquet file for ${ref.config ? `config "${ref.config}", ` : ''}split "${ref.split}"${files.length ? ` (the dataset has ${have}${files.length > 8 ? ', ...' : ''})` : ' (the dataset has no parquet files)'}`);
  }
  const { parquetReadObjects, asyncBufferFromFile } = await import('hyparquet');
  const out: string[] = [];
  for (const f of chosen) {
    if (out.length >= max) break;
    o.onFile?.(f.path, f.size);
    let local: string;
    try {
      local = await quietDownload({ ...common, path: f.path, cacheDir: o.cacheDir ?? hubCacheDir() });
    } catch (e) {
      throw new CalibrationDataError(`${name}: download of ${f.path} failed (${(e as Error).message})`);
    }
    let rows: Record<string, unknown>[];
    try {
      rows = await parquetReadObjects({ file: await asyncBufferFromFile(local), rowEnd: (max - out.length) * 2 });
    } catch (e) {
      throw new CalibrationDataError(`${name}: cannot read ${f.path} as parquet (${(e as Error).message})`);
    }
    for (const r of rows) {
      const t = recordText(r, ref.field, `${name} (${f.path})`);
      if (t && out.length < max) out.push(t);
    }
  }
  if (out.length === 0) throw new CalibrationDataError(`${name}: no text in the chosen parquet files`);
  return out;
}

/** A record's text: `field`, else `text`, `article` or `messages` (turn contents joined by "\n"). */
export function recordText(r: Record<string, unknown>, field: string | undefined, where: string): string | undefined {
  const key = field ?? ['text', 'article', 'messages'].find((k) => k in r);
  if (key === undefined) throw new CalibrationDataError(`${where}: no "text", "article" or "messages" column (columns: ${Object.keys(r).join(', ')}); name one with ?field=`);
  if (!(key in r)) throw new CalibrationDataError(`${where}: no column "${key}" (columns: ${Object.keys(r).join(', ')})`);
  const v = r[key];
  if (typeof v === 'string') return v.length > 0 ? v : undefined;
  if (Array.isArray(v) && v.every((t) => t && typeof t === 'object' && typeof (t as { content?: unknown }).content === 'string')) {
    return v.map((t) => (t as { content: string }).content).join('\n') || undefined;
  }
  throw new CalibrationDataError(`${where}: column "${key}" is neither a string nor a list of {content} turns`);
}

/**
 * ModelOpt's default calibration mix (hf_ptq.py `cnn_nemotron_v2_mix`, spec modelopt-format.md
 * §11.1): half the samples from cnn_dailymail 3.0.0 `article`, half from
 * Nemotron-Post-Training-Dataset-v2 split evenly over stem, chat, math and code (the remainder to
 * the last), each taken in order.
 */
export function modeloptDefaultMix(samples: number): { ref: HubDatasetRef; count: number }[] {
  const cnn = Math.ceil(samples / 2);
  const rest = samples - cnn;
  const splits = ['stem', 'chat', 'math', 'code'];
  const each = Math.floor(rest / splits.length);
  return [
    { ref: { repo: 'abisee/cnn_dailymail', revision: 'main', config: '3.0.0', split: 'train', field: 'article' }, count: cnn },
    ...splits.map((split, i) => ({
      ref: { repo: 'nvidia/Nemotron-Post-Training-Dataset-v2', revision: 'main', split, field: 'messages' },
      count: i === splits.length - 1 ? rest - each * (splits.length - 1) : each,
    })),
  ].filter((p) => p.count > 0);
}
