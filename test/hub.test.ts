/** Hub downloads against a local server that answers the endpoints @huggingface/hub uses. */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createServer, type Server } from 'node:http';
import { mkdtemp, mkdir, readdir, readFile, rm, stat, cp, writeFile, chmod } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { execFile } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ROOT, STORIES, synthetic } from './helpers.js';
import { loadCalibration, loadModeloptDefaultMix } from '../src/calibration/data.js';
import { modeloptDefaultMix, parseHubDataset, recordText } from '../src/calibration/hub-dataset.js';
import { CalibrationDataError } from '../src/errors.js';

let server: Server;
let url: string;
let tmp: string;
let repoDir: string;
const hits: string[] = [];
const COMMIT = 'a'.repeat(40);
let created = false;
let datasetDir: string;
const committed = new Map<string, Buffer>();

beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'rxq-hub-'));
  repoDir = join(tmp, 'repo');
  await cp(synthetic('llama31'), repoDir, { recursive: true });
  for (const f of await readdir(repoDir)) await chmod(join(repoDir, f), 0o644);
  await rm(join(repoDir, 'reference.safetensors'));
  await writeFile(join(repoDir, 'pytorch_model.bin'), Buffer.alloc(4096)); // must never be downloaded
  await writeFile(join(repoDir, 'tokenizer_config.json'), '{}');
  // a dataset laid out as cnn_dailymail is: <config>/<split>-NNNNN-of-NNNNN.parquet
  datasetDir = join(tmp, 'dataset');
  const { parquetWriteBuffer } = await import('hyparquet-writer');
  const parquet = (articles: string[]) => Buffer.from(parquetWriteBuffer({ columnData: [{ name: 'id', data: articles.map((_, i) => i), type: 'INT32' }, { name: 'article', data: articles, type: 'STRING' }] }));
  await mkdir(join(datasetDir, '3.0.0'), { recursive: true });
  await writeFile(join(datasetDir, '3.0.0', 'train-00000-of-00002.parquet'), parquet(['Once upon a time', 'Hello world!']));
  await writeFile(join(datasetDir, '3.0.0', 'train-00001-of-00002.parquet'), parquet(['Once upon a time']));
  await writeFile(join(datasetDir, '3.0.0', 'validation-00000-of-00001.parquet'), parquet(['Hello world!']));
  await writeFile(join(datasetDir, 'README.md'), '# tiny');
  const walk = async (d: string, pre = ''): Promise<string[]> =>
    (await Promise.all((await readdir(d, { withFileTypes: true })).map((e) => (e.isDirectory() ? walk(join(d, e.name), `${pre}${e.name}/`) : [`${pre}${e.name}`])))).flat();
  server = createServer(async (req, res) => {
    const u = new URL(req.url!, 'http://x');
    hits.push(`${req.method} ${u.pathname}`);
    // the model and the dataset: listing, paths-info and downloads (ranges included)
    for (const repo of [
      { api: 'models', resolve: '/test-org/tiny-llama', name: 'test-org/tiny-llama', dir: repoDir },
      { api: 'datasets', resolve: '/datasets/test-org/tiny-text', name: 'test-org/tiny-text', dir: datasetDir },
    ]) {
      const oid = async (f: string) => createHash('sha1').update(await readFile(join(repo.dir, f))).digest('hex');
      const list = async () => Promise.all((await walk(repo.dir)).map(async (f) => ({ type: 'file', path: f, size: (await stat(join(repo.dir, f))).size, oid: await oid(f) })));
      if (u.pathname.startsWith(`/api/${repo.api}/${repo.name}/tree/`)) {
        res.setHeader('content-type', 'application/json');
        return res.end(JSON.stringify(await list()));
      }
      if (u.pathname.startsWith(`/api/${repo.api}/${repo.name}/paths-info/`) && req.method === 'POST') {
        let body = '';
        for await (const c of req) body += c;
        const paths: string[] = JSON.parse(body).paths;
        res.setHeader('content-type', 'application/json');
        return res.end(JSON.stringify((await list()).filter((e) => paths.includes(e.path)).map((e) => ({ ...e, lastCommit: { id: COMMIT, title: 't', date: '2026-01-01T00:00:00Z' } }))));
      }
      const m = new RegExp(`^${repo.resolve}/resolve/[^/]+/(.+)$`).exec(u.pathname);
      if (m) {
        const f = decodeURIComponent(m[1]!);
        const data = await readFile(join(repo.dir, f)).catch(() => undefined);
        if (!data) {
          res.statusCode = 404;
          res.setHeader('X-Error-Code', 'EntryNotFound');
          return res.end();
        }
        res.setHeader('ETag', `"${await oid(f)}"`);
        res.setHeader('X-Repo-Commit', COMMIT);
        const range = /bytes=(\d+)-(\d*)/.exec(req.headers.range ?? '');
        if (range) {
          const a = Number(range[1]), b = range[2] ? Number(range[2]) : data.length - 1;
          res.statusCode = 206;
          res.setHeader('Content-Range', `bytes ${a}-${b}/${data.length}`);
          return res.end(data.subarray(a, b + 1));
        }
        return res.end(data);
      }
    }
    // upload: the repo exists after creation, small files go inline ("regular") in the commit
    if (u.pathname === '/api/models/test-org/uploaded') {
      res.statusCode = created ? 200 : 404;
      return res.end(created ? '{}' : '');
    }
    if (u.pathname === '/api/repos/create' && req.method === 'POST') {
      created = true;
      res.setHeader('content-type', 'application/json');
      return res.end(JSON.stringify({ url: `${url}/test-org/uploaded` }));
    }
    if (u.pathname === '/api/models/test-org/uploaded/preupload/main') {
      let body = '';
      for await (const c of req) body += c;
      res.setHeader('content-type', 'application/json');
      return res.end(JSON.stringify({ files: JSON.parse(body).files.map((f: { path: string }) => ({ path: f.path, uploadMode: 'regular' })) }));
    }
    if (u.pathname === '/api/models/test-org/uploaded/commit/main') {
      let body = '';
      for await (const c of req) body += c;
      for (const line of body.split('\n')) {
        const op = JSON.parse(line);
        if (op.key === 'file') committed.set(op.value.path, Buffer.from(op.value.content, 'base64'));
      }
      res.setHeader('content-type', 'application/json');
      return res.end(JSON.stringify({ commitOid: COMMIT, commitUrl: `${url}/test-org/uploaded/commit/${COMMIT}`, success: true }));
    }
    res.statusCode = 404;
    res.end('not found');
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  url = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
});

afterAll(async () => {
  server.close();
  await rm(tmp, { recursive: true, force: true });
});

function cli(args: string[], env: Record<string, string>): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile('node', [join(ROOT, 'bin', 'rxquant.js'), ...args], { cwd: tmp, env: { ...process.env, ...env } }, (err, stdout, stderr) =>
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    );
  });
}

describe('Hugging Face Hub', () => {
  it('quantizes org/name: downloads what the export needs into HF_HOME, reuses the cache the second time', async () => {
    const env = { HF_ENDPOINT: url, HF_HOME: join(tmp, 'hf-home'), HF_TOKEN: 'hf_test' };
    const r = await cli(['quantize', 'test-org/tiny-llama', '-f', 'fp8_pb_wo', '-o', join(tmp, 'out')], env);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/fetching model\.safetensors/);
    const snapshot = join(tmp, 'hf-home', 'hub', 'models--test-org--tiny-llama', 'snapshots', COMMIT);
    expect((await readdir(snapshot)).sort()).toEqual(['config.json', 'generation_config.json', 'model.safetensors', 'tokenizer_config.json']);
    expect(hits.some((h) => h.includes('pytorch_model.bin'))).toBe(false);
    const downloads = hits.filter((h) => h.startsWith('GET /test-org/tiny-llama/resolve/')).length;
    const again = await cli(['quantize', 'test-org/tiny-llama', '-f', 'fp8_pb_wo', '-o', join(tmp, 'out2')], env);
    expect(again.code, again.stderr).toBe(0);
    expect(hits.filter((h) => h.startsWith('GET /test-org/tiny-llama/resolve/')).length).toBe(downloads);
    expect(Buffer.compare(await readFile(join(tmp, 'out', 'model.safetensors')), await readFile(join(tmp, 'out2', 'model.safetensors')))).toBe(0);
  });

  it('--upload pushes the finished export to a new repo', async () => {
    const env = { HF_ENDPOINT: url, HF_HOME: join(tmp, 'hf-home'), HF_TOKEN: 'hf_test' };
    const r = await cli(['quantize', 'test-org/tiny-llama', '-f', 'fp8_pb_wo', '-o', join(tmp, 'out-up'), '--upload', 'test-org/uploaded'], env);
    expect(r.code, r.stderr).toBe(0);
    expect(created).toBe(true);
    expect([...committed.keys()].sort()).toEqual((await readdir(join(tmp, 'out-up'))).sort());
    expect(Buffer.compare(committed.get('model.safetensors')!, await readFile(join(tmp, 'out-up', 'model.safetensors')))).toBe(0);
  });

  it('a repo that does not exist is one clear error', async () => {
    const r = await cli(['quantize', 'test-org/missing', '-f', 'fp8_pb_wo', '-o', join(tmp, 'out3')], { HF_ENDPOINT: url, HF_HOME: join(tmp, 'hf-home') });
    expect(r.code).not.toBe(0);
    expect(r.stderr.trim()).toMatch(/^error: test-org\/missing: cannot list the repo on the Hub/);
  });
});

describe('calibration data from a Hub dataset', () => {
  const hub = () => ({ hubUrl: url, cacheDir: join(tmp, 'hf-home', 'hub') });
  const online = async <T>(f: () => Promise<T>): Promise<T> => {
    const was = process.env.HF_HUB_OFFLINE;
    delete process.env.HF_HUB_OFFLINE;
    try {
      return await f();
    } finally {
      if (was !== undefined) process.env.HF_HUB_OFFLINE = was;
    }
  };

  it('hf://datasets/ORG/NAME?config=&split=&field= reads the split\'s parquet files in order into the cache, tokenized as .jsonl records', async () => {
    const ids = await online(() => loadCalibration('hf://datasets/test-org/tiny-text?config=3.0.0&split=train&field=article', STORIES, { samples: 3, seqLen: 4 }, hub()));
    // the same texts as the .jsonl test: "Once upon a time", "Hello world!", then the second file's record
    expect(ids).toEqual([[1, 403, 407, 261], [1, 346, 306, 414], [1, 403, 407, 261]]);
    const snapshot = join(tmp, 'hf-home', 'hub', 'datasets--test-org--tiny-text', 'snapshots', COMMIT, '3.0.0');
    expect((await readdir(snapshot)).sort()).toEqual(['train-00000-of-00002.parquet', 'train-00001-of-00002.parquet']);
    // the column is found without ?field= too (article, as cnn_dailymail names it), and the split picks its files
    expect(await online(() => loadCalibration('hf://datasets/test-org/tiny-text?split=validation', STORIES, { samples: 8, seqLen: 4 }, hub()))).toEqual([[1, 346, 306, 414]]);
  });

  it('a split, option or dataset that is not there is one clear error; HF_HUB_OFFLINE=1 never asks', async () => {
    await expect(online(() => loadCalibration('hf://datasets/test-org/tiny-text?split=test', STORIES, { samples: 1, seqLen: 4 }, hub()))).rejects.toThrow(
      /no parquet file for split "test" \(the dataset has 3\.0\.0\/train-00000-of-00002\.parquet/,
    );
    expect(() => parseHubDataset('hf://datasets/test-org/tiny-text?splt=train')).toThrow(/unknown option "splt"/);
    await expect(online(() => loadCalibration('hf://datasets/test-org/missing', STORIES, { samples: 1, seqLen: 4 }, hub()))).rejects.toThrow(/cannot list the dataset on the Hub/);
    const before = hits.length;
    process.env.HF_HUB_OFFLINE = '1';
    await expect(loadCalibration('hf://datasets/test-org/tiny-text', STORIES, { samples: 1, seqLen: 4 }, hub())).rejects.toThrow(/HF_HUB_OFFLINE=1/);
    expect(hits.length).toBe(before);
  });

  it("ModelOpt's default mix: half cnn_dailymail articles, half Nemotron v2 over stem/chat/math/code, remainder to the last; chat turns joined by newlines", async () => {
    const mix = (n: number) => modeloptDefaultMix(n).map((p) => `${p.ref.repo.split('/')[1]}:${p.ref.split}:${p.count}`);
    expect(mix(1024)).toEqual(['cnn_dailymail:train:512', 'Nemotron-Post-Training-Dataset-v2:stem:128', 'Nemotron-Post-Training-Dataset-v2:chat:128', 'Nemotron-Post-Training-Dataset-v2:math:128', 'Nemotron-Post-Training-Dataset-v2:code:128']);
    expect(mix(7)).toEqual(['cnn_dailymail:train:4', 'Nemotron-Post-Training-Dataset-v2:code:3']);
    expect(modeloptDefaultMix(4)[0]!.ref).toMatchObject({ repo: 'abisee/cnn_dailymail', config: '3.0.0', field: 'article' });
    expect(recordText({ messages: [{ role: 'user', content: 'a' }, { role: 'assistant', content: 'b' }] }, undefined, 'x')).toBe('a\nb');
    expect(() => recordText({ body: 'x' }, undefined, 'x')).toThrow(CalibrationDataError);
    // this server has neither dataset: a clear error the CLI turns into a warning and the bundled text
    await expect(online(() => loadModeloptDefaultMix(STORIES, { samples: 2, seqLen: 4 }, hub()))).rejects.toThrow(/abisee\/cnn_dailymail.*cannot list the dataset/);
  });
});
