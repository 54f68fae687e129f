/**
 * How a long run reports itself: progress bars on a terminal (cli-progress), one JSON object per
 * line with --json (for orchestrators), or a short summary only when output is piped.
 */
import cliProgress from 'cli-progress';
import { formatBytes } from '../safetensors/size.js';

export type Mode = 'tty' | 'json' | 'quiet';

export function outputMode(json: boolean | undefined): Mode {
  if (json) return 'json';
  return process.stderr.isTTY ? 'tty' : 'quiet';
}

export class Reporter {
  private bar: cliProgress.SingleBar | undefined;
  private started = Date.now();

  constructor(readonly mode: Mode) {}

  /** A JSON event (json mode) — stage, numbers, RSS. */
  event(stage: string, fields: Record<string, unknown> = {}): void {
    if (this.mode !== 'json') return;
    const rss = process.memoryUsage().rss;
    process.stdout.write(JSON.stringify({ stage, ...fields, rss, elapsed_s: (Date.now() - this.started) / 1000 }) + '\n');
  }

  startBar(label: string, total: number, unit: 'bytes' | 'items'): void {
    if (this.mode !== 'tty') return;
    this.stopBar();
    const fmtValue = unit === 'bytes' ? (v: number) => formatBytes(v) : (v: number) => String(v);
    this.bar = new cliProgress.SingleBar(
      {
        format: `${label.padEnd(10)} [{bar}] {percentage}% | {done}/{all} | {rate} | ETA {eta_formatted}`,
        stream: process.stderr,
        hideCursor: true,
        clearOnComplete: false,
        etaBuffer: 20,
      },
      cliProgress.Presets.shades_classic,
    );
    this.bar.start(total, 0, { done: fmtValue(0), all: fmtValue(total), rate: '' });
    this.count = 0;
    this.fmtValue = fmtValue;
    this.unit = unit;
  }

  private fmtValue: (v: number) => string = String;
  private unit: 'bytes' | 'items' = 'items';

  updateBar(value: number): void {
    if (!this.bar) return;
    const secs = (Date.now() - this.started) / 1000;
    const rate = this.unit === 'bytes' && secs > 0 ? `${formatBytes(value / secs)}/s` : '';
    this.bar.update(value, { done: this.fmtValue(value), rate });
  }

  /** Advances the bar by one item. */
  tick(): void {
    if (!this.bar) return;
    this.count++;
    this.updateBar(this.count);
  }
  private count = 0;

  stopBar(): void {
    this.bar?.stop();
    this.bar = undefined;
  }

  /** Human lines: printed on a terminal and when piped, never in json mode. */
  info(line: string): void {
    if (this.mode === 'json') return;
    process.stdout.write(line + '\n');
  }

  warn(line: string): void {
    if (this.mode === 'json') this.event('warning', { message: line });
    else process.stderr.write(`warning: ${line}\n`);
  }
}
