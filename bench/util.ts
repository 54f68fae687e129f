/** Helpers for the benchmarks: timing external commands, evicting files from the page cache, machine info. */
import { execFileSync, spawnSync } from 'node:child_process';
import { cpus, totalmem } from 'node:os';
import { closeSync, openSync, readFileSync, readSync, readdirSync } from 'node:fs';
import { join } from 'node:path';

export function evict(path: string): void {
  // POSIX_FADV_DONTNEED on this file only (no global drop_caches)
  spawnSync('dd', [`if=${path}`, 'iflag=nocache', 'count=0'], { stdio: 'ignore' });
}

/** Evicts every file of `dir` ending in `ext` from the page cache (a cold-cache run). */
export function evictDir(dir: string, ext = '.safetensors'): void {
  for (const f of readdirSync(dir)) if (f.endsWith(ext)) evict(join(dir, f));
}

/** Wall seconds of a shell command. */
export function timeShell(cmd: string, env: NodeJS.ProcessEnv = process.env): number {
  const t = process.hrtime.bigint();
  const r = spawnSync('bash', ['-c', cmd], { stdio: ['ignore', 'ignore', 'pipe'], env });
  if (r.status !== 0) throw new Error(`${cmd} failed: ${r.stderr}`);
  return Number(process.hrtime.bigint() - t) / 1e9;
}

/** Runs a command, returns wall seconds and peak RSS (KiB) from GNU time. */
export function timeWithRss(cmd: string, env: NodeJS.ProcessEnv = process.env): { seconds: number; rssMiB: number; stdout: string } {
  const t = process.hrtime.bigint();
  const r = spawnSync('/usr/bin/time', ['-f', '%M', 'bash', '-c', cmd], { env, encoding: 'utf8', maxBuffer: 1 << 26 });
  const seconds = Number(process.hrtime.bigint() - t) / 1e9;
  if (r.status !== 0) throw new Error(`${cmd} failed (${r.status}): ${r.stderr.slice(-2000)}`);
  const lines = r.stderr.trim().split('\n');
  return { seconds, rssMiB: Number(lines[lines.length - 1]) / 1024, stdout: r.stdout };
}

export function machine(): string {
  let kernel = '';
  try {
    kernel = execFileSync('uname', ['-r'], { encoding: 'utf8' }).trim();
  } catch {
    /* ignore */
  }
  let model = cpus()[0]?.model ?? 'unknown CPU';
  try {
    const m = /model name\s*:\s*(.*)/.exec(readFileSync('/proc/cpuinfo', 'utf8'));
    if (m) model = m[1]!;
  } catch {
    /* ignore */
  }
  return `${cpus().length} x ${model}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB RAM, Node ${process.version}, Linux ${kernel}`;
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

export const GB = 1e9;

/** Two files byte for byte (64 MiB at a time). */
export function sameFile(a: string, b: string): boolean {
  const fa = openSync(a, 'r'), fb = openSync(b, 'r');
  try {
    const ba = Buffer.alloc(64 * 2 ** 20), bb = Buffer.alloc(64 * 2 ** 20);
    for (let at = 0; ; at += ba.length) {
      const na = readSync(fa, ba, 0, ba.length, at), nb = readSync(fb, bb, 0, bb.length, at);
      if (na !== nb || !ba.subarray(0, na).equals(bb.subarray(0, nb))) return false;
      if (na === 0) return true;
    }
  } finally {
    closeSync(fa);
    closeSync(fb);
  }
}
