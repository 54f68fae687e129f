/**
 * Never lose the input: an output location is checked against every input before any work.
 *
 * Paths are compared after resolving `.`, `..`, trailing slashes and symlinks (realpath of the
 * nearest existing ancestor, then the rest of the path), so `MODEL/`, `MODEL/../MODEL` and a
 * symlink to MODEL are all MODEL. An output is refused when it
 *   - equals an input (an `--overwrite` would replace it),
 *   - contains an input (replacing the output would delete the input with it), or
 *   - lies inside an input folder that must stay untouched (the source model, the folder of
 *     `--hf-config`, the Hub cache of the source: the export's temporary folder and files would be
 *     written into it).
 * A folder that merely holds a statistics or calibration file may hold the output too (`--out
 * ./q` beside `./stats.safetensors` is fine); it is refused only when the output equals or
 * contains it.
 */
import { realpath } from 'node:fs/promises';
import { basename, dirname, join, resolve, sep } from 'node:path';
import { OutputError } from '../errors.js';

export interface GuardedInput {
  /** What it is, for the message: "the source model", "the --stats file's folder". */
  what: string;
  path: string;
  /** Also refuse an output inside this folder (default: only equal or containing). */
  noWritesInside?: boolean;
}

/** realpath of a path that may not exist yet: its nearest existing ancestor's realpath, plus the rest. */
export async function resolvedPath(p: string): Promise<string> {
  const abs = resolve(p);
  const rest: string[] = [];
  for (let probe = abs; ; probe = dirname(probe)) {
    try {
      const real = await realpath(probe);
      return rest.length ? join(real, ...rest.reverse()) : real;
    } catch {
      if (dirname(probe) === probe) return abs;
      rest.push(basename(probe));
    }
  }
}

const inside = (child: string, parent: string) => child !== parent && child.startsWith(parent.endsWith(sep) ? parent : parent + sep);

/**
 * Throws an OutputError naming the input an output at `out` would destroy or write into.
 * `outFlag` names the option in the message ("--out", "-o").
 */
export async function refuseDestructiveOutput(out: string, inputs: readonly GuardedInput[], outFlag = '--out'): Promise<void> {
  const o = await resolvedPath(out);
  for (const input of inputs) {
    const i = await resolvedPath(input.path);
    let how: string | undefined;
    if (o === i) how = 'is';
    else if (inside(i, o)) how = 'contains';
    else if (input.noWritesInside && inside(o, i)) how = 'lies inside';
    if (how) {
      const shown = o === resolve(out) ? o : `${out} (${o})`;
      throw new OutputError(`${outFlag} ${shown} ${how} ${input.what} (${i}); refusing to write there, even with --overwrite: choose an output folder outside the inputs`);
    }
  }
}

/**
 * The Hub cache folder of a model resolved from the Hub (`.../hub/models--org--name`, whose
 * `snapshots/<rev>` the model path is and whose `blobs/` the snapshot's files link to), if it is one.
 */
export function hubCacheRepoOf(modelPath: string): string | undefined {
  const parts = resolve(modelPath).split(sep);
  const s = parts.lastIndexOf('snapshots');
  if (s >= 1 && parts[s - 1]!.startsWith('models--')) return parts.slice(0, s).join(sep) || sep;
  return undefined;
}
