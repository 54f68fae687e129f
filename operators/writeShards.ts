import { concatMap, concatWith, defer, catchError, finalize, type Observable, type OperatorFunction } from 'rxjs';
import { refuseDestructiveOutput, hubCacheRepoOf, type GuardedInput } from '../src/util/output-guard.js';
import { planShards, ShardWriter, type ShardPlan } from '../src/safetensors/writer.js';
import { directReadSpan } from '../src/safetensors/file.js';
import { parseSize } from '../src/safetensors/size.js';
import { exportSideFiles } from '../src/export/side-files.js';
import type { ExportPlan } from '../src/export/plan.js';
import { unitId, type PackedUnit } from '../src/export/units.js';
import { RxquantError } from '../src/errors.js';
import { span as traced } from '../src/util/trace.js';

export interface WriteShardsOptions {
  /** Largest shard, "10GB" by default like ModelOpt (GB/MB decimal, GiB/MiB binary). */
  maxShardSize?: string | number;
  /** Replace a non-empty output folder. */
  overwrite?: boolean;
  /**
   * Bytes per read when copying unquantized tensors through (default 4 MiB; three reused buffers).
   * 4 MiB copied the 8B-shaped bench's 2.1 GB of embeddings as fast as 8 MiB did (1.30-1.34 s) and
   * keeps 12 MiB less resident (the DeepSeek-shaped export's peak fell from 301-308 to 286-294 MB).
   */
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
  /**
   * O_DIRECT (default true) for the output and for tensors copied through: steady disk speed and
   * no page-cache cost; false sends both through the page cache (a file system where O_DIRECT is
   * slow). Where the file system refuses O_DIRECT, the page cache is used anyway.
   */
  directIO?: boolean;
  /** Told once, when an interrupted export is picked up again: units already on disk. */
  onResume?: (doneUnits: number) => void;
  /** Told after each output tensor is completely written. */
  onTensor?: (name: string, bytes: number) => void;
  /**
   * Write only this file of the planned shard layout (a distributed export's shard task): the other
   * shards' tensors are dropped as they arrive, and no index or side files are written.
   */
  only?: string;
}

export type WriteEvent =
  | { type: 'unit'; kind: 'layer' | 'rest'; layer: number; part?: { index: number; count: number }; bytesWritten: number; totalBytes: number; resumed?: boolean }
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
      // An error upstream (a NaN in the next layer) ends the chain while a unit may still be in
      // writeUnit (a promise cannot be cancelled): it must neither create the temporary folder
      // after the cleanup nor write into an aborted writer. So: a flag it checks, and the cleanup
      // waits for it.
      let stopped = false;
      let current: Promise<unknown> = Promise.resolve();
      const stop = async () => {
        stopped = true;
        await current.catch(() => undefined);
        await writer?.abort();
      };
      const stoppedError = () => new RxquantError('export stopped');
      let alreadyDone = new Set<string>();
      const pending: { id: string; tensors: string[] }[] = [];
      let pendingBytes = 0;
      const checkpointEvery = parseSize(options.checkpointEvery ?? '2GB');
      const copyBytes = Math.ceil((options.copyChunkBytes ?? 4 * 2 ** 20) / 4096) * 4096;
      // page-aligned (a WebAssembly.Memory's base is) for O_DIRECT reads; three: two reads in flight
      // while the third is being copied into the writer
      const span = directReadSpan(copyBytes);
      const copyMemory = new WebAssembly.Memory({ initial: Math.ceil((3 * span) / 65536) });
      const buffers = [0, 1, 2].map((i) => new Uint8Array(copyMemory.buffer, i * span, span));

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
          // never into, over or around the source (its folder, or its Hub cache folder)
          const inputs: GuardedInput[] = [{ what: 'the source model', path: unit.model.dir, noWritesInside: true }];
          const hub = hubCacheRepoOf(unit.model.dir);
          if (hub) inputs.push({ what: "the source's Hugging Face cache folder", path: hub, noWritesInside: true });
          await refuseDestructiveOutput(outDir, inputs);
          // an EAGLE draft is one file written by safetensors' save_file, without metadata (spec families.md §7.2)
          shards = plan.model.eagleDraft ? planShards(plan.outputs, Number.MAX_SAFE_INTEGER, { metadata: null }) : planShards(plan.outputs, maxShardSize);
          if (options.only !== undefined) {
            const s = shards.shards.find((f) => f.file === options.only);
            if (!s) throw new RxquantError(`writeShards: no shard "${options.only}" in the planned layout (${shards.shards.map((f) => f.file).join(', ')})`);
            shards = { shards: [s], totalSize: s.dataLength, weightMap: new Map(s.tensors.map((t) => [t.name, s.file])) };
          }
          const w = await ShardWriter.create(outDir, shards, { overwrite: options.overwrite, fingerprint: options.fingerprint, restart: options.restart, directIO: options.directIO });
          if (stopped) {
            await w.abort();
            throw stoppedError();
          }
          writer = w;
          alreadyDone = writer.doneUnits();
          if (alreadyDone.size > 0) options.onResume?.(alreadyDone.size);
        }
        const id = unitId(unit);
        const before = written;
        const mine = (name: string) => shards!.weightMap.has(name); // all of them, unless `only`
        const names = [...unit.streams.flatMap((s) => s.tensors.map((t) => t.name)), ...unit.outputs.map((o) => o.name)].filter(mine);
        if (alreadyDone.has(id)) {
          // on disk from the interrupted run: identical bytes, nothing to do
          for (const n of names) written += writer.tensor(n).byteLength;
          return { type: 'unit', kind: unit.kind, layer: unit.layer, part: unit.part, bytesWritten: written, totalBytes: shards!.totalSize, resumed: true };
        }
        // quantized weights: chunks packed into shared slots, written, slots returned
        for (const s of unit.streams) {
          s.tensors.filter((t) => mine(t.name)).forEach(check);
          // iterated by hand to time the wait for each part; return() on an early exit, as for-await does,
          // so the stream gives back the slots of the chunks still in flight
          const it = s.parts()[Symbol.asyncIterator]();
          let drained = false;
          try {
            for (;;) {
              const next = await traced('chunk-wait', 0, s.tensors[0]?.name ?? '', () => it.next());
              if (next.done) {
                drained = true;
                break;
              }
              const part = next.value;
              if (stopped) {
                part.release();
                throw stoppedError();
              }
              try {
                for (const w of part.writes) {
                  if (!mine(w.name)) continue;
                  await traced('write', w.data.length, w.name, () => writer!.write(w.name, w.data, w.offset));
                  written += w.data.length;
                }
              } finally {
                part.release();
              }
            }
          } finally {
            if (!drained) await it.return?.();
          }
          for (const t of s.tensors) if (mine(t.name)) options.onTensor?.(t.name, writer.tensor(t.name).byteLength);
        }
        // scales, norms, embeddings: in memory, or copied through one reused buffer
        for (const o of unit.outputs) {
          if (!mine(o.name)) continue;
          check(o);
          if ('data' in o) {
            await traced('write', o.data.length, o.name, () => writer!.write(o.name, o.data));
            written += o.data.length;
          } else {
            // read once: O_DIRECT, two chunks ahead of the one being handed to the writer
            const src = o.source;
            const reads: { at: number; data: Promise<Uint8Array> }[] = [];
            let next = 0;
            let i = 0;
            const launch = () => {
              if (next >= src.byteLength) return;
              const end = Math.min(src.byteLength, next + copyBytes);
              const buf = buffers[i++ % 3]!;
              const data = traced('copy-read', end - next, o.name, () => (options.directIO === false ? src.readBytes(next, end, buf) : src.readBytesDirect(next, end, buf)));
              data.catch(() => undefined); // surfaced when awaited
              reads.push({ at: next, data });
              next += copyBytes;
            };
            launch();
            launch();
            while (reads.length > 0) {
              const r = reads.shift()!;
              const bytes = await r.data;
              await traced('copy-write', bytes.length, o.name, () => writer!.write(o.name, bytes, r.at));
              launch();
            }
            written += src.byteLength;
          }
          options.onTensor?.(o.name, writer.tensor(o.name).byteLength);
        }
        pending.push({ id, tensors: names });
        pendingBytes += written - before;
        if (pendingBytes >= checkpointEvery) {
          await traced('commit', 0, id, () => writer!.commitUnits(pending.splice(0)));
          pendingBytes = 0;
        }
        return { type: 'unit', kind: unit.kind, layer: unit.layer, part: unit.part, bytesWritten: written, totalBytes: shards!.totalSize };
      };

      const done: Observable<WriteEvent> = defer(async () => {
        if (!writer || !plan || !shards) throw new RxquantError('writeShards: no units arrived');
        if (options.only === undefined) for (const f of await exportSideFiles(plan)) await writer.writeSideFile(f.name, f.content);
        // the shards' last pages, their flush to the device, the index, the rename into place
        await traced('finish', 0, outDir, () => writer!.finish());
        finished = true;
        await plan.model.close();
        return { type: 'done' as const, outDir, plan, shards, totalBytes: shards.totalSize };
      });

      return source.pipe(
        concatMap((unit) => {
          const p = (async () => {
            try {
              return await writeUnit(unit);
            } finally {
              unit.release();
            }
          })();
          current = p;
          return p;
        }),
        concatWith(done),
        catchError(async (err) => {
          await stop();
          await plan?.model.close();
          throw err;
        }),
        finalize(() => {
          // unsubscribed mid-run (Ctrl-C): drop the partial folder
          if (!finished) void stop();
        }),
      );
    });
}
