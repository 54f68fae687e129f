/**
 * The import rules of .dependency-cruiser.cjs (no cycles, no upward imports; `npm test` runs them
 * on the real tree before vitest) catch what they are meant to: checked here on a scratch tree with
 * one cycle and one upward import, and on the real tree, which must be clean.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises';
import { execFileSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ROOT } from './helpers.js';

/** Runs the dependency-cruiser CLI with the project's rules in `cwd`; returns "rule: from -> to" lines. */
function violations(cwd: string): string[] {
  const bin = join(ROOT, 'node_modules', 'dependency-cruiser', 'bin', 'dependency-cruise.mjs');
  let text: string;
  try {
    text = execFileSync(process.execPath, [bin, 'src', 'operators', '--config', join(ROOT, '.dependency-cruiser.cjs'), '--output-type', 'json'], { cwd, encoding: 'utf8', maxBuffer: 1 << 28 });
  } catch (e) {
    text = (e as { stdout: string }).stdout; // exit 1 when it found violations
  }
  const out = JSON.parse(text) as { summary: { violations: { rule: { name: string }; from: string; to: string }[] } };
  return out.summary.violations.map((v) => `${v.rule.name}: ${v.from} -> ${v.to}`);
}

let tmp: string;
beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'rxq-imports-'));
  const file = async (p: string, text: string) => {
    await mkdir(join(tmp, p, '..'), { recursive: true });
    await writeFile(join(tmp, p), text);
  };
  await file('src/forward/a.ts', "import { b } from './b.js';\nexport const a = () => b;\n");
  await file('src/forward/b.ts', "import { a } from './a.js';\nexport const b = () => a;\n");
  await file('src/formats/up.ts', "import { op } from '../../operators/op.js';\nexport const up = op;\n");
  await file('operators/op.ts', "import { c } from '../src/codecs/c.js';\nexport const op = c;\n");
  await file('src/codecs/c.ts', 'export const c = 1;\n');
  await file('tsconfig.json', JSON.stringify({ compilerOptions: { module: 'NodeNext', moduleResolution: 'NodeNext', allowJs: false } }));
});
afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});

describe('import rules', () => {
  it('report a cycle and an upward import, and accept a downward one', async () => {
    const v = violations(tmp);
    expect(v).toContain('no-circular: src/forward/a.ts -> src/forward/b.ts');
    expect(v).toContain('no-upward-from-formats: src/formats/up.ts -> operators/op.ts');
    expect(v.some((x) => x.includes('operators/op.ts -> src/codecs/c.ts'))).toBe(false);
  });
  it('the real tree has none', async () => {
    expect(violations(ROOT)).toEqual([]);
  });
});
