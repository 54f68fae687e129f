import { from, Observable } from 'rxjs';
import { openModel, type SourceModel } from '../src/model.js';
import { LayerBudget } from '../src/pipeline/budget.js';
import type { ModelUnit } from '../src/export/units.js';

export interface ReadCheckpointOptions {
  /**
   * How many units may be between this source and the writer at once (default 2). A unit holds no
   * data until an operator reads it, so this is what bounds memory. Chains that do not end in
   * `writeShards` must call `unit.release()` when done with a unit.
   */
  layersInFlight?: number;
  /** The source is a Megatron-Core torch_dist checkpoint read with this HF model folder's config.json (see openModel). */
  hfConfig?: string;
}

/**
 * Source: reads config.json and the shard headers only, then emits one unit per decoder layer
 * (its tensors as lazy references) followed by one unit with the rest (embeddings, final norm,
 * lm_head). The files stay open until `unit.model.close()` (writeShards does it).
 *
 * @example
 * ```ts
 * import { readCheckpoint, quantize, pack, writeShards } from 'rxquant/operators';
 * import { lastValueFrom } from 'rxjs';
 *
 * await lastValueFrom(
 *   readCheckpoint('models/Llama-3.1-8B').pipe(
 *     quantize('fp8_pb_wo'),
 *     pack(),
 *     writeShards('out/Llama-3.1-8B-FP8-PB'),
 *   ),
 * );
 * ```
 */
export function readCheckpoint(dirOrModel: string | SourceModel, options: ReadCheckpointOptions = {}): Observable<ModelUnit> {
  return new Observable<ModelUnit>((subscriber) => {
    const budget = new LayerBudget(options.layersInFlight ?? 2);
    const opened: { model?: SourceModel } = {};
    let completed = false;
    const sub = from(units(dirOrModel, budget, opened, options.hfConfig)).subscribe({
      next: (u) => subscriber.next(u),
      error: (e) => subscriber.error(e),
      complete: () => {
        completed = true;
        subscriber.complete();
      },
    });
    return () => {
      sub.unsubscribe();
      // on error or unsubscribe the files are ours to close; after completion the consumer
      // still reads them and closes them (writeShards does)
      if (!completed && typeof dirOrModel === 'string') void opened.model?.close();
    };
  });
}

async function* units(dirOrModel: string | SourceModel, budget: LayerBudget, opened: { model?: SourceModel }, hfConfig?: string): AsyncGenerator<ModelUnit> {
  const model = typeof dirOrModel === 'string' ? await openModel(dirOrModel, { hfConfig }) : dirOrModel;
  opened.model = model;
  const claimed = new Set<string>();
  const unit = (kind: 'layer' | 'rest', layer: number, names: string[]): ModelUnit => {
    let released = false;
    return {
      model,
      kind,
      layer,
      tensors: names.map((n) => model.tensors.get(n)!),
      release: () => {
        if (!released) {
          released = true;
          budget.release();
        }
      },
    };
  };
  const all = [...model.tensors.keys()];
  for (const layout of model.layers) {
    const prefix = `${layout.prefix}.`;
    const names = all.filter((n) => n.startsWith(prefix));
    for (const n of names) claimed.add(n);
    await budget.acquire();
    yield unit('layer', layout.index, names);
  }
  await budget.acquire();
  yield unit('rest', -1, all.filter((n) => !claimed.has(n)));
}
