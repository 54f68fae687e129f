/**
 * Export against the disk floor, in one run: a cold `cat` of the input shards, an O_DIRECT `dd` write
 * of the output's size, then rxquant exporting fp8_pb_wo, fp8 and nvfp4 from a cold cache (the CLI,
 * as a user runs it), each as a ratio to that floor (read + write), with peak RSS. Also a stricter
 * floor with an O_DIRECT `dd` read in place of `cat`, and a durable one: that read plus an O_DIRECT
 * write with fsync, since the export is synced before it is renamed into place.
 */
import { readdirSync, statSync, rmSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { synthesize } from './synth.js';
import { evictDir, timeShell, timeWithRss, median, GB } from './util.js';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

function dirBytes(dir: string, ext = '.safetensors'): number {
  return readdirSync(dir).filter((f) => f.endsWith(ext) && f.startsWith('model')).reduce((a, f) => a + statSync(join(dir, f)).size, 0);
}

export async function benchExport(dataDir: string, layers = 5, formats = ['fp8_pb_wo', 'fp8', 'nvfp4'], repeats = 3): Promise<string[]> {
  const model = join(dataDir, `llama8b-${layers}`);
  const { stats } = await synthesize(model, layers);
  const inBytes = dirBytes(model);
  const rows = [
    `input: Llama-3.1-8B shapes, ${layers} layers, ${(inBytes / GB).toFixed(2)} GB bf16 in ${readdirSync(model).filter((f) => f.startsWith('model-')).length} shards`,
    '',
    '| format | output GB | cold read (cat) s | O_DIRECT write (dd) s | floor s | rxquant s | x floor | O_DIRECT read (dd) s | x strict floor | O_DIRECT write + fsync (dd) s | x durable floor | peak RSS MiB |',
    '|---|---|---|---|---|---|---|---|---|---|---|---|',
  ];
  for (const format of formats) {
    const out = join(dataDir, `out-${format}`);
    // this VM's disk varies 2-4x between runs: interleave floor and export, report medians
    const runs: { read: number; write: number; direct: number; durable: number; rx: number; rss: number; outBytes: number }[] = [];
    for (let i = 0; i < repeats; i++) {
      rmSync(out, { recursive: true, force: true });
      evictDir(model);
      const r = timeWithRss(`node ${join(ROOT, 'bin', 'rxquant.js')} quantize ${model} -f ${format} --stats ${stats} -o ${out} --overwrite`);
      const outBytes = dirBytes(out);
      rmSync(out, { recursive: true, force: true });
      evictDir(model);
      const read = timeShell(`cat ${join(model, '*.safetensors')} > /dev/null`);
      const ddFile = join(dataDir, 'dd-floor.bin');
      const write = timeShell(`dd if=/dev/zero of=${ddFile} bs=8M count=${Math.ceil(outBytes / 8388608)} oflag=direct status=none`);
      rmSync(ddFile, { force: true });
      // a stricter floor: the reads without the page cache (whose CPU cost this VM makes large)
      evictDir(model);
      const direct = timeShell(readdirSync(model).filter((f) => f.endsWith('.safetensors')).map((f) => `dd if=${join(model, f)} of=/dev/null bs=8M iflag=direct status=none`).join(' && '));
      // the write made durable, as rxquant makes its output before renaming it into place (fsync):
      // on this VM an O_DIRECT write returns before the data is on the device
      const durable = timeShell(`dd if=/dev/zero of=${ddFile} bs=8M count=${Math.ceil(outBytes / 8388608)} oflag=direct conv=fsync status=none`);
      rmSync(ddFile, { force: true });
      runs.push({ read, write, direct, durable, rx: r.seconds, rss: r.rssMiB, outBytes });
    }
    const m = (f: (r: (typeof runs)[number]) => number) => median(runs.map(f));
    const floor = m((r) => r.read + r.write);
    const ratio = m((r) => r.rx / (r.read + r.write));
    rows.push(`| ${format} | ${(runs[0]!.outBytes / GB).toFixed(2)} | ${m((r) => r.read).toFixed(2)} | ${m((r) => r.write).toFixed(2)} | ${floor.toFixed(2)} | ${m((r) => r.rx).toFixed(2)} | ${ratio.toFixed(2)} (${runs.map((r) => (r.rx / (r.read + r.write)).toFixed(2)).join(', ')}) | ${m((r) => r.direct).toFixed(2)} | ${m((r) => r.rx / (r.direct + r.write)).toFixed(2)} | ${m((r) => r.durable).toFixed(2)} | ${m((r) => r.rx / (r.direct + r.durable)).toFixed(2)} | ${Math.max(...runs.map((r) => r.rss)).toFixed(0)} |`);
  }
  rows.push(
    '',
    `medians of ${repeats} runs; "x floor" lists each run's ratio to the floor (cat + dd write) measured right after it; "x strict floor" uses an O_DIRECT dd read instead of cat (rxquant reads the tensors it copies through with O_DIRECT too); "x durable floor" is O_DIRECT read + O_DIRECT write with fsync (conv=fsync): rxquant syncs every shard before the rename that publishes the export, and on this VM an O_DIRECT write returns before its data is on the device`,
  );
  return rows;
}
