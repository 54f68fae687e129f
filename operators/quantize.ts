import { Observable, from, mergeMap, type OperatorFunction } from 'rxjs';
import { createPlan, type ExportOptions, type ExportPlan } from '../src/export/plan.js';
import { formatSpec, type FormatName, type FormatSpec } from '../src/export/formats.js';
import { quantizeLayerParts } from '../src/export/quantize-layer.js';
import { KernelPool, defaultWorkers } from '../src/kernels/pool.js';
import type { ModelUnit, QuantizedUnit } from '../src/export/units.js';
import type { Stats } from '../src/export/stats.js';

export interface QuantizeOptions extends ExportOptions {
  /** Worker threads for the kernels (default: one per core; 0 runs them on the main thread). */
  workers?: number;
  /** Share a pool across chains instead of creating one. */
  pool?: KernelPool;
  /** Source bytes per chunk the kernels work on (default 8 MiB); memory per chunk in flight. */
  chunkBytes?: number;
  /**
   * A decoder layer with more than this many bytes of quantized source weights is emitted in parts
   * of at least that size (default: half the machine's memory); see LayerParts in
   * src/export/quantize-layer.ts.
   */
  partBytes?: number;
  /** Units quantized concurrently (default 2). */
  concurrency?: number;
  /** Called once with the plan, before the first unit is quantized. */
  onPlan?: (plan: ExportPlan) => void;
}

/**
 * Computes scales and codes for every quantizable linear of each unit (ModelOpt's math, spec §6/§8),
 * with the kernels in Piscina worker threads. Statistics come from `options.stats` and/or from
 * `calibrate` upstream (unit.stats). Emits QuantizedUnit: codes not yet packed, so an operator of
 * your own can inspect or alter them before `pack()`. Units come out in source order. A decoder layer
 * larger than `partBytes` comes out as several units, `part` set on each: its linears a group at a
 * time, so that each group's codes pass finds its weights still in the page cache.
 *
 * @example
 * ```ts
 * import { loadStats } from 'rxquant';
 * const stats = await loadStats('stats.safetensors');
 * readCheckpoint('model').pipe(quantize('nvfp4', { stats, kvCache: 'fp8_cast' }), pack(), writeShards('out'));
 * ```
 */
export function quantize(format: FormatName | FormatSpec, options: QuantizeOptions = {}): OperatorFunction<ModelUnit, QuantizedUnit> {
  const spec = typeof format === 'string' ? formatSpec(format) : format;
  return (source) =>
    new Observable<QuantizedUnit>((subscriber) => {
      const pool = options.pool ?? new KernelPool(options.workers ?? defaultWorkers(), options.chunkBytes);
      // Codes are computed as the consumer pulls them, after this operator has emitted the unit, so
      // the workers live until every emitted unit is released (or the chain is torn down).
      let outstanding = 0;
      let sourceDone = false;
      let closed = false;
      const close = () => {
        if (!closed && !options.pool) {
          closed = true;
          void pool.close();
        }
      };
      let plan: ExportPlan | undefined;
      let previous: Promise<void> = Promise.resolve();
      const sub = source
        .pipe(
          mergeMap((unit) => {
            if (!plan) {
              plan = createPlan(unit.model, spec, { ...options, deferStatsCheck: unit.stats !== undefined });
              options.onPlan?.(plan);
            }
            const p = plan;
            // Units come out in source order, parts in order: a unit's parts are computed ahead (their
            // scan passes) while the unit before it is still coming out, but emitted only after it.
            // Out of order, the rest unit (a copy of embeddings and lm_head, gigabytes) overtook an MoE
            // layer's later parts and held the writer while their codes waited.
            const turn = previous;
            let ended!: () => void;
            previous = new Promise<void>((r) => (ended = r));
            // a layer may come out in parts (quantize-layer.ts, LayerParts); the source unit is released
            // with its last part
            let left = 0;
            return from(
              (async function* () {
                try {
                  const { count, parts } = await quantizeLayerParts(unit, p, mergeStats(options.stats, unit.stats), pool, options.partBytes);
                  left = count;
                  // released parts are counted from when they are computed (see aheadOf)
                  async function* tracked(): AsyncGenerator<QuantizedUnit> {
                    for await (const q of parts) {
                      outstanding++;
                      let released = false;
                      q.release = () => {
                        if (released) return;
                        released = true;
                        if (--left === 0) unit.release();
                        if (--outstanding === 0 && sourceDone) close();
                      };
                      yield q;
                    }
                  }
                  yield* aheadOf(tracked(), turn);
                } finally {
                  ended();
                }
              })(),
            );
          }, options.concurrency ?? 2),
        )
        .subscribe({
          next: (q) => subscriber.next(q),
          error: (e) => subscriber.error(e),
          complete: () => {
            sourceDone = true;
            if (outstanding === 0) close();
            subscriber.complete();
          },
        });
      return () => {
        sub.unsubscribe();
        // torn down before the source completed (error, unsubscribe): nobody will pull codes any more.
        // After completion, the teardown runs at once, while emitted units are still being written.
        if (!sourceDone) close();
      };
    });
}

function mergeStats(a: Stats | undefined, b: Stats | undefined): Stats {
  if (!a) return b ?? new Map();
  if (!b) return a;
  return new Map([...a, ...b]);
}

/**
 * Yields what `items` yields, pulling it eagerly from the start but yielding nothing before `turn`
 * resolves: the items already pulled are held (a layer part is its scales and lazy tensor
 * references, small). An error of `items` is thrown when it is reached.
 */
async function* aheadOf<T>(items: AsyncIterable<T>, turn: Promise<void>): AsyncGenerator<T> {
  const held: T[] = [];
  let finished = false;
  let failure: { error: unknown } | undefined;
  let wake: (() => void) | undefined;
  const pump = (async () => {
    try {
      for await (const x of items) {
        held.push(x);
        wake?.();
      }
    } catch (error) {
      failure = { error };
    }
    finished = true;
    wake?.();
  })();
  await turn;
  for (;;) {
    while (held.length > 0) yield held.shift()!;
    if (failure) throw failure.error;
    if (finished) break;
    await new Promise<void>((r) => (wake = r));
    wake = undefined;
  }
  await pump;
}
