/**
 * Models from the Hugging Face Hub: `org/name` is downloaded through @huggingface/hub into the
 * standard cache (HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub), reusing what is
 * cached and fetching only what an export needs (config, tokenizer and side files, the safetensors
 * shards; never .bin/.pt duplicates). HF_TOKEN authenticates, HF_ENDPOINT points elsewhere than
 * huggingface.co (tests use a local server).
 */
import { stat, readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { homedir } from 'node:os';
import type { downloadFileToCacheDir } from '@huggingface/hub';
// @huggingface/hub is imported where it is used (~55 ms to load): a local model never needs it
const hubLibrary = () => import('@huggingface/hub');
import { CheckpointError } from './errors.js';

export interface HubOptions {
  revision?: string;
  token?: string;
  hubUrl?: string;
  cacheDir?: string;
  onFile?: (path: string, size: number) => void;
}

const WEIGHTS_NOT_NEEDED = /\.(bin|pt|pth|ckpt|h5|msgpack|gguf|onnx|npz|tflite|ot)$/i;

export function hubCacheDir(): string {
  return process.env.HF_HUB_CACHE ?? join(process.env.HF_HOME ?? join(homedir(), '.cache', 'huggingface'), 'hub');
}

export function looksLikeRepoId(s: string): boolean {
  return /^[A-Za-z0-9][\w.-]*\/[\w.-]+$/.test(s) && !s.startsWith('.') && !s.includes('..');
}

/** A local folder as given, or a Hub repo id downloaded to the cache; returns the folder to read. */
export async function resolveModel(arg: string, o: HubOptions = {}): Promise<string> {
  try {
    await stat(arg);
    return arg;
  } catch {
    /* not a local path */
  }
  if (!looksLikeRepoId(arg)) throw new CheckpointError(arg, 'no such file or folder (and not a Hugging Face repo id like org/name)');
  return downloadModel(arg, o);
}

/** downloadFileToCacheDir without the line the library prints on stdout for each download. */
export async function quietDownload(params: Parameters<typeof downloadFileToCacheDir>[0]): Promise<string> {
  const debug = console.debug;
  console.debug = () => undefined;
  try {
    return await (await hubLibrary()).downloadFileToCacheDir(params);
  } finally {
    console.debug = debug;
  }
}

export async function downloadModel(repo: string, o: HubOptions = {}): Promise<string> {
  const common = {
    repo: { type: 'model' as const, name: repo },
    revision: o.revision ?? 'main',
    hubUrl: o.hubUrl ?? process.env.HF_ENDPOINT,
    accessToken: o.token ?? process.env.HF_TOKEN,
  };
  const cacheDir = o.cacheDir ?? hubCacheDir();
  const files: { path: string; size: number }[] = [];
  try {
    const { listFiles } = await hubLibrary();
    for await (const f of listFiles({ ...common, recursive: false })) if (f.type === 'file') files.push({ path: f.path, size: f.size });
  } catch (e) {
    throw new CheckpointError(repo, `cannot list the repo on the Hub (${(e as Error).message}); private or gated repos need HF_TOKEN`);
  }
  const names = new Set(files.map((f) => f.path));
  if (!names.has('config.json')) throw new CheckpointError(repo, 'the repo has no config.json: not a transformers checkpoint');
  const wanted = files.filter((f) => !WEIGHTS_NOT_NEEDED.test(f.path) && !f.path.endsWith('.safetensors') && !f.path.startsWith('.'));
  const fetch1 = async (path: string, size: number): Promise<string> => {
    o.onFile?.(path, size);
    try {
      return await quietDownload({ ...common, path, cacheDir });
    } catch (e) {
      throw new CheckpointError(`${repo}/${path}`, `download failed (${(e as Error).message})`);
    }
  };
  let dir: string | undefined;
  for (const f of wanted) dir = dirname(await fetch1(f.path, f.size));
  // shards: those the index names, or the single file
  let shards: string[];
  if (names.has('model.safetensors.index.json')) {
    const index = JSON.parse(await readFile(join(dir!, 'model.safetensors.index.json'), 'utf8')) as { weight_map?: Record<string, string> };
    shards = [...new Set(Object.values(index.weight_map ?? {}))];
  } else if (names.has('model.safetensors')) {
    shards = ['model.safetensors'];
  } else {
    throw new CheckpointError(repo, 'the repo has no safetensors weights (model.safetensors or model.safetensors.index.json)');
  }
  for (const s of shards) {
    const f = files.find((x) => x.path === s);
    if (!f) throw new CheckpointError(repo, `shard "${s}" named in the index is not in the repo`);
    dir = dirname(await fetch1(s, f.size));
  }
  return dir!;
}

/** Pushes a finished export to a model repo (created if missing), one commit with every file. */
export async function uploadExport(dir: string, repo: string, o: HubOptions & { message?: string } = {}): Promise<void> {
  const { createRepo, repoExists, uploadFiles } = await import('@huggingface/hub');
  const { readdir } = await import('node:fs/promises');
  const { pathToFileURL } = await import('node:url');
  if (!looksLikeRepoId(repo)) throw new CheckpointError(repo, '--upload needs a repo id like org/name');
  const token = o.token ?? process.env.HF_TOKEN;
  if (!token) throw new CheckpointError(repo, 'uploading needs a write token in HF_TOKEN');
  const common = { repo: { type: 'model' as const, name: repo }, hubUrl: o.hubUrl ?? process.env.HF_ENDPOINT, accessToken: token };
  try {
    if (!(await repoExists(common))) await createRepo(common);
    const names = (await readdir(dir)).filter((f) => !f.startsWith('.')).sort();
    await uploadFiles({
      ...common,
      branch: o.revision,
      commitTitle: o.message ?? 'Upload ModelOpt unified checkpoint made by rxquant',
      files: names.map((f) => ({ path: f, content: pathToFileURL(join(dir, f)) })),
    });
  } catch (e) {
    if (e instanceof CheckpointError) throw e;
    throw new CheckpointError(repo, `upload failed (${(e as Error).message})`);
  }
}
