/**
 * ModelOpt's `_prefix_wildcard_summarize_exclude_modules` (spec §3.5): compresses the names of
 * unquantized modules into sorted prefix wildcards that never match a quantized module.
 */
export function summarizeExcludeModules(unquantized: Iterable<string>, quantized: Iterable<string>): string[] {
  const negative = new Set<string>();
  for (const q of quantized) {
    negative.add(q);
    for (let i = 0; i <= q.length; i++) negative.add(q.slice(0, i) + '*');
  }
  const result = new Set<string>();
  for (const u of unquantized) {
    const candidates: string[][] = [];
    for (let i = 0; i < u.length; i++) {
      if (u[i] !== '.') continue;
      const p = u.slice(0, i);
      candidates.push([p + '*']);
      candidates.push([p, p + '.*']);
    }
    candidates.push([u]);
    for (const cand of candidates) {
      if (cand.some((c) => negative.has(c))) continue;
      if (cand.every((c) => result.has(c))) break;
      for (const c of cand) result.add(c);
      break;
    }
  }
  // a pair [p, p.*] is emitted as just "p.*"
  const out = [...result].filter((r) => !result.has(r + '.*'));
  return out.sort(pyCompare);
}

/** Python's default string ordering (by code point). */
export function pyCompare(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** fnmatch-style match as engines apply exclude patterns: `*` matches anything, dots included. */
export function matchesPattern(name: string, pattern: string): boolean {
  const re = new RegExp('^' + pattern.split('*').map((s) => s.replace(/[.+?^${}()|[\]\\]/g, '\\$&')).join('.*') + '$');
  return re.test(name);
}
