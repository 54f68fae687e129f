import { UsageError } from '../errors.js';

const UNITS: Record<string, number> = {
  B: 1,
  KB: 1e3,
  MB: 1e6,
  GB: 1e9,
  TB: 1e12,
  KIB: 2 ** 10,
  MIB: 2 ** 20,
  GIB: 2 ** 30,
  TIB: 2 ** 40,
};

/**
 * Parses a size like ModelOpt / transformers: "10GB" and "500MB" are decimal, "5GiB" binary;
 * a bare integer is bytes.
 */
export function parseSize(s: string | number): number {
  if (typeof s === 'number') {
    if (!Number.isSafeInteger(s) || s <= 0) throw new UsageError(`invalid size ${s}: expected a positive integer of bytes`);
    return s;
  }
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(s);
  const unit = (m?.[2] ?? '').toUpperCase() || 'B';
  if (!m || UNITS[unit] === undefined) {
    throw new UsageError(`invalid size "${s}": expected a number with KB, MB, GB (decimal) or KiB, MiB, GiB (binary)`);
  }
  const n = Math.floor(Number(m[1]) * UNITS[unit]!);
  if (n <= 0) throw new UsageError(`invalid size "${s}": must be positive`);
  return n;
}

export function formatBytes(n: number): string {
  if (n < 1e3) return `${n} B`;
  const units = ['KB', 'MB', 'GB', 'TB'];
  let v = n;
  let i = -1;
  while (v >= 1000 && i < units.length - 1) {
    v /= 1000;
    i++;
  }
  return `${v.toFixed(v >= 100 ? 0 : v >= 10 ? 1 : 2)} ${units[i]}`;
}
