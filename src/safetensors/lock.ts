/**
 * A lock on an output location, so two runs never write the same export at once. The lock is a
 * small file beside the hidden partial folder (`.NAME.rxquant-partial.lock`) holding the owner's
 * pid, host and start time. It appears whole: written to a file of this process's own, then
 * hard-linked to the lock's name, which fails if the name exists (an O_EXCL create followed by a
 * write would let a second run read an empty lock and take it for a dead one's). A second run finds it and stops with
 * a message naming the owner. A lock whose owner is gone (a run killed with SIGKILL, a power loss:
 * same host, no such pid) is stale and taken over, so the interrupted export can resume.
 */
import { link, readFile, rm, writeFile } from 'node:fs/promises';
import { rmSync } from 'node:fs';
import { hostname } from 'node:os';
import { OutputError } from '../errors.js';

export interface LockOwner {
  pid: number;
  host: string;
  started: string;
}

/** Locks held by this process, removed if it exits without releasing them (an uncaught error, process.exit). */
const held = new Set<string>();
let exitHook = false;

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM'; // exists, owned by someone else
  }
}

async function readOwner(path: string): Promise<LockOwner | undefined> {
  try {
    const o = JSON.parse(await readFile(path, 'utf8')) as LockOwner;
    return Number.isSafeInteger(o.pid) && typeof o.host === 'string' ? o : undefined;
  } catch {
    return undefined; // unreadable: not a lock rxquant wrote whole, so nobody holds it
  }
}

export class OutputLock {
  private constructor(readonly path: string) {}

  /** Takes the lock at `path` for the output `out`, or throws an OutputError naming the run that holds it. */
  static async acquire(path: string, out: string): Promise<OutputLock> {
    for (let attempt = 0; attempt < 2; attempt++) {
      const mine = `${path}.${process.pid}.tmp`;
      try {
        await writeFile(mine, JSON.stringify({ pid: process.pid, host: hostname(), started: new Date().toISOString() } satisfies LockOwner));
        try {
          await link(mine, path);
        } finally {
          await rm(mine, { force: true });
        }
        held.add(path);
        if (!exitHook) {
          exitHook = true;
          process.on('exit', () => {
            for (const p of held) rmSync(p, { force: true });
          });
        }
        return new OutputLock(path);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw new OutputError(`${path}: cannot create the output lock (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
      }
      const owner = await readOwner(path);
      const stale = !owner || (owner.host === hostname() && owner.pid !== process.pid && !alive(owner.pid));
      if (!stale || attempt === 1) {
        const who = owner ? `${owner.pid === process.pid ? 'this process' : `pid ${owner.pid}`}${owner.host === hostname() ? '' : ` on ${owner.host}`}, started ${owner.started}` : 'unknown';
        throw new OutputError(`${out}: another rxquant run (${who}) is writing this output; wait for it to finish or stop it (its lock: ${path})`);
      }
      await rm(path, { force: true }); // stale: its owner is gone; take it over (once: a racing taker wins above)
    }
    throw new OutputError(`${path}: cannot take the output lock`);
  }

  async release(): Promise<void> {
    if (!held.delete(this.path)) return;
    await rm(this.path, { force: true });
  }
}
