/** The README's quickstart and library example run as written. */
import { describe, expect, it } from 'vitest';
import { readFile, writeFile, rm, readdir } from 'node:fs/promises';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { join } from 'node:path';
import { ROOT } from './helpers.js';
import { verifyExport } from '../src/verify.js';

const run = promisify(execFile);

describe('README', () => {
  it('the library example runs from the repository root and writes a valid export', async () => {
    const readme = await readFile(join(ROOT, 'README.md'), 'utf8');
    const code = /## The library[\s\S]*?```js\n([\s\S]*?)```/.exec(readme)![1]!;
    const file = join(ROOT, '.readme-example.mjs');
    await writeFile(file, code);
    try {
      const { stdout } = await run('node', [file], { cwd: ROOT });
      expect(stdout).toContain('model.layers.0.self_attn.q_proj');
      const r = await verifyExport(join(ROOT, 'out', 'stories260K-NVFP4'));
      expect(r.failures).toEqual([]);
    } finally {
      await rm(file, { force: true });
      await rm(join(ROOT, 'out'), { recursive: true, force: true });
    }
  });

  it('the quickstart command quantizes the bundled model to NVFP4 and reports perplexity before and after', async () => {
    const cwd = join(ROOT, 'scratch-quickstart');
    await rm(cwd, { recursive: true, force: true });
    await import('node:fs/promises').then((fs) => fs.mkdir(cwd, { recursive: true }));
    try {
      const { stdout } = await run('node', [join(ROOT, 'bin', 'rxquant.js'), 'quantize', '--calib-samples', '8', '--eval-windows', '4'], { cwd });
      expect(stdout).toMatch(/wrote .*rxquant-out/);
      expect(stdout).toMatch(/format nvfp4 \(quant_algo NVFP4\)/);
      const m = /perplexity on \d+ tokens of .*: ([\d.]+) before, ([\d.]+) after/.exec(stdout)!;
      expect(Number(m[1])).toBeGreaterThan(1);
      expect(Number(m[2])).toBeGreaterThan(Number(m[1]) * 0.98); // quantization does not help
      expect(Number(m[2])).toBeLessThan(Number(m[1]) * 1.5);
      expect((await readdir(join(cwd, 'rxquant-out'))).sort()).toContain('hf_quant_config.json');
    } finally {
      await rm(cwd, { recursive: true, force: true });
    }
  });
});
