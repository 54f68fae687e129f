import { concatMap, concatWith, defer, catchError, finalize, type Observable, type OperatorFunction } from 'rxjs';
import { planShards, ShardWriter, type ShardPlan } from '../src/safetensors/writer.js';
import { parseSize } from '../src/safetensors/size.js';
import { exportSideFiles } from '../src/export/side-files.js';
import type { ExportPlan } from '../src/export/plan.js';
import type { PackedUnit } from '../src/pipeline/units.js';
import { RxquantError } from '../src/errors.js';

export interface WriteShardsOptions {
  /** Largest shard, "10GB" by default like ModelOpt (GB/MB decimal, GiB/MiB binary). */
  maxShardSize?: string | number;
  /** Replace a non-empty output folder. */
  overwrite?: boolean;
  /** Bytes per read when copying unquantized tensors through (default 16 MiB, one reused buffer). */
  copyChunkBytes?: number;
  /** Resumable export keyed by this fingerprint of source and options (see ShardWriter). */
  fingerprint?: string;
  /**
   * Resumable exports record finished units after at least this many bytes (default "2GB"): each
   * record waits for the disk to flush, so a smaller value loses less on a crash and runs slower.
   */
  checkpointEvery?: string | number;
  /** Discard an interrupted export made with other options. */
  restart?: boolean;
  /** Told once, when an interrupted export is picked up again: units already on disk. */
  onResume?: (doneUnits: number) => void;
  /** Told after each output tensor is completely written. */
  onTensor?: (name: string, bytes: number) => void;
}

export type WriteEvent =
  | { type: 'unit'; kind: 'layer' | 'rest'; layer: number; bytesWritten: number; totalBytes: number; resumed?: boolean }
  | { type: 'done'; outDir: string; plan: ExportPlan; shards: ShardPlan; totalBytes: number };

/**
 * Writes units as they arrive into shards planned up front from the export plan (every tensor's
 * place is known before any data exists), then config.json with quantization_config,
 * hf_quant_config.json, generation_config.json and the tokenizer/side files. Everything goes to a
 * temporary folder beside `outDir`, renamed into place only when complete.
 *
 * @example
 * ```ts
 * readCheckpoint('model').pipe(quantize('fp8_pb_wo'), pack(), writeShards('out', { maxShardSize: '5GB' }))
 *   .subscribe((e) => e.type === 'unit' && console.log(`${e.bytesWritten}/${e.totalBytes}`));
 * ```
 */
export function writeShards(outDir: string, options: WriteShardsOptions = {}): OperatorFunction<PackedUnit, WriteEvent> {
  const maxShardSize = parseSize(options.maxShardSize ?? '10GB');
  return (source) =>
    defer(() => {
      let writer: ShardWriter | undefined;
      let plan: ExportPlan | undefined;
      let shards: ShardPlan | undefined;
      let written = 0;
      let finished = false;
      let alreadyDone = new Set<string>();
      const pending: { id: string; tensors: string[] }[] = [];
      let pendingBytes = 0;
      const checkpointEvery = parseSize(options.checkpointEvery ?? '2GB');
      const copyBytes = options.copyChunkBytes ?? 16 * 2 ** 20;
      const buffers = [new Uint8Array(copyBytes), new Uint8Array(copyBytes)];

      const check = (o: { name: string; dtype: string; shape: readonly number[] }) => {
        const planned = writer!.tensor(o.name);
        if (planned.dtype !== o.dtype || planned.shape.join(',') !== o.shape.join(',')) {
          throw new RxquantError(
            `output tensor "${o.name}" is ${o.dtype} [${o.shape.join(', ')}] but the plan says ${planned.dtype} [${planned.shape.join(', ')}]`,
          );
        }
      };

      const writeUnit = async (unit: PackedUnit): Promise<WriteEvent> => {
        if (!writer) {
          plan = unit.plan;
          shards = planShards(plan.outputs, maxShardSize);
          writer = await ShardWriter.create(outDir, shards, { overwrite: options.overwrite, fingerprint: options.fingerprint, restart: options.restart });
          alreadyDone = writer.doneUnits();
          if (alreadyDone.size > 0) options.onResume?.(alreadyDone.size);
        }
        const id = unit.kind === 'layer' ? `layer ${unit.layer}` : 'rest';
        const before = written;
        const names = [...unit.streams.flatMap((s) => s.tensors.map((t) => t.name)), ...unit.outputs.map((o) => o.name)];
        if (alreadyDone.has(id)) {
          // on disk from the interrupted run: identical bytes, nothing to do
          for (const n of names) written += writer.tensor(n).byteLength;
          return { type: 'unit', kind: unit.kind, layer: unit.layer, bytesWritten: written, totalBytes: shards!.totalSize, resumed: true };
        }
        // quantized weights: chunks packed into shared slots, written, slots returned
        for (const s of unit.streams) {
          s.tensors.forEach(check);
          for await (const part of s.parts()) {
            try {
              for (const w of part.writes) {
                await writer.write(w.name, w.data, w.offset);
                written += w.data.length;
              }
            } finally {
              part.release();
            }
          }
          for (const t of s.tensors) options.onTensor?.(t.name, writer.tensor(t.name).byteLength);
        }
        // scales, norms, embeddings: in memory, or copied through one reused buffer
        for (const o of unit.outputs) {
          check(o);
          if ('data' in o) {
            await writer.write(o.name, o.data);
            written += o.data.length;
          } else {
            // double-buffered: the read of the next chunk overlaps the write of this one
            const src = o.source;
            const step = buffers[0]!.length;
            const read = (at: number, i: number) => src.readBytes(at, Math.min(src.byteLength, at + step), buffers[i % 2]!);
            let pending = src.byteLength > 0 ? read(0, 0) : undefined;
            for (let at = 0, i = 0; pending; at += step, i++) {
              const chunk = await pending;
              pending = at + step < src.byteLength ? read(at + step, i + 1) : undefined;
              await writer.write(o.name, chunk, at);
            }
            written += src.byteLength;
          }
          options.onTensor?.(o.name, writer.tensor(o.name).byteLength);
        }
        pending.push({ id, tensors: names });
        pendingBytes += written - before;
        if (pendingBytes >= checkpointEvery) {
          await writer.commitUnits(pending.splice(0));
          pendingBytes = 0;
        }
        return { type: 'unit', kind: unit.kind, layer: unit.layer, bytesWritten: written, totalBytes: shards!.totalSize };
      };

      const done: Observable<WriteEvent> = defer(async () => {
        if (!writer || !plan || !shards) throw new RxquantError('writeShards: no units arrived');
        for (const f of await exportSideFiles(plan)) await writer.writeSideFile(f.name, f.content);
        await writer.finish();
        finished = true;
        await plan.model.close();
        return { type: 'done' as const, outDir, plan, shards, totalBytes: shards.totalSize };
      });

      return source.pipe(
        concatMap(async (unit) => {
          try {
            return await writeUnit(unit);
          } finally {
            unit.release();
          }
        }),
        concatWith(done),
        catchError(async (err) => {
          await writer?.abort();
          await plan?.model.close();
          throw err;
        }),
        finalize(() => {
          // unsubscribed mid-run (Ctrl-C): drop the partial folder
          if (writer && !finished) void writer.abort();
        }),
      );
    });
}
