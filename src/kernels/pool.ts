/** A pool of Piscina worker threads for the kernels; with 0 workers, kernels run inline. */
import { Piscina } from 'piscina';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { cpus } from 'node:os';
import { runKernel, type KernelTask, type KernelResult } from './tasks.js';
import { splitResult } from './envelope.js';

/** The compiled worker: beside this file in dist/, or dist/ mirrored when running from TypeScript sources. */
function workerPath(): string {
  const here = fileURLToPath(import.meta.url);
  const candidates = [here.replace(/pool\.(ts|js)$/, 'worker.js'), here.replace(/[\\/]src[\\/]kernels[\\/]pool\.ts$/, '/dist/src/kernels/worker.js')];
  const found = candidates.find((p) => p.endsWith('.js') && existsSync(p));
  if (!found) throw new Error(`kernel worker not built (looked for ${candidates.join(', ')}); run "npm run build"`);
  return found;
}

export function defaultWorkers(): number {
  return Math.max(1, cpus().length);
}

export class KernelPool {
  private piscina: Piscina | undefined;

  constructor(readonly workers: number = defaultWorkers()) {
    if (workers > 0) {
      this.piscina = new Piscina({ filename: workerPath(), minThreads: workers, maxThreads: workers, idleTimeout: 1000 });
    }
  }

  async run(task: KernelTask): Promise<KernelResult> {
    if (!this.piscina) return runKernel(task);
    // the weight buffer is transferred, not cloned: callers give up ownership. Keep what splitResult needs.
    const shape = { ...task, w: { length: task.w.length } as Float32Array };
    const buf = (await this.piscina.run(task, { transferList: [task.w.buffer as ArrayBuffer] })) as Uint8Array;
    return splitResult(shape, buf);
  }

  async close(): Promise<void> {
    const p = this.piscina;
    this.piscina = undefined;
    await p?.destroy();
  }
}
