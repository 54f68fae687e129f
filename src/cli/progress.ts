/**
 * How a long run reports itself: one progress bar per stage on a terminal (cli-progress: done/total,
 * throughput, ETA), one JSON object per line with --json (for orchestrators), or a short summary
 * only when output is piped.
 */
import cliProgress from 'cli-progress';
import { formatBytes } from '../safetensors/size.js';

export type Mode = 'tty' | 'json' | 'quiet';

export function outputMode(json: boolean | undefined): Mode {
  if (json) return 'json';
  return process.stderr.isTTY ? 'tty' : 'quiet';
}

interface Bar {
  bar: cliProgress.SingleBar;
  unit: 'bytes' | 'items';
  started: number;
  value: number;
}

export class Reporter {
  private multi: cliProgress.MultiBar | undefined;
  private bars = new Map<string, Bar>();
  private started = Date.now();

  constructor(readonly mode: Mode) {}

  /** A JSON event (json mode): stage, numbers, RSS, elapsed time. */
  event(stage: string, fields: Record<string, unknown> = {}): void {
    if (this.mode !== 'json') return;
    const rss = process.memoryUsage().rss;
    process.stdout.write(JSON.stringify({ stage, ...fields, rss, elapsed_s: (Date.now() - this.started) / 1000 }) + '\n');
  }

  /** Starts a bar for a stage (terminal only). */
  startBar(stage: string, total: number, unit: 'bytes' | 'items'): void {
    if (this.mode !== 'tty') return;
    this.multi ??= new cliProgress.MultiBar(
      {
        format: '{stage} [{bar}] {percentage}% | {done}/{all} | {rate} | ETA {eta_formatted}',
        stream: process.stderr,
        hideCursor: true,
        clearOnComplete: false,
        etaBuffer: 20,
      },
      cliProgress.Presets.shades_classic,
    );
    const fmt = (v: number) => (unit === 'bytes' ? formatBytes(v) : String(v));
    const bar = this.multi.create(total, 0, { stage: stage.padEnd(10), done: fmt(0), all: fmt(total), rate: '' });
    this.bars.set(stage, { bar, unit, started: Date.now(), value: 0 });
  }

  /** Sets a stage's progress (or advances it by one item with no value); `rate` replaces the computed rate's label. */
  update(stage: string, value?: number, rateLabel?: string): void {
    const b = this.bars.get(stage);
    if (!b) return;
    b.value = value ?? b.value + 1;
    const secs = (Date.now() - b.started) / 1000;
    const rate = rateLabel ?? (secs <= 0 ? '' : b.unit === 'bytes' ? `${formatBytes(b.value / secs)}/s` : `${(b.value / secs).toFixed(2)}/s`);
    b.bar.update(b.value, { done: b.unit === 'bytes' ? formatBytes(b.value) : String(b.value), rate });
  }

  stopBars(): void {
    this.multi?.stop();
    this.multi = undefined;
    this.bars.clear();
  }

  /** Human lines: printed on a terminal and when piped, never in json mode. */
  info(line: string): void {
    if (this.mode === 'json') return;
    if (this.multi) this.multi.log(line + '\n');
    else process.stdout.write(line + '\n');
  }

  warn(line: string): void {
    if (this.mode === 'json') this.event('warning', { message: line });
    else if (this.multi) this.multi.log(`warning: ${line}\n`);
    else process.stderr.write(`warning: ${line}\n`);
  }
}
