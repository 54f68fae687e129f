/**
 * `rxquant report` on stories260K exported to fp8 and nvfp4: its numbers recomputed here from what
 * `eval` computes (the logits of each window, through its onLogits hook) and from the export's stored
 * bytes dequantized with the format records; then the page opened in a real headless browser
 * (Debian's chromium; skipped with a message where none is installed).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { execFileSync, spawnSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ROOT, readAll } from './helpers.js';
import { exportCheckpoint } from '../src/export-checkpoint.js';
import { loadCalibration } from '../src/calibration/data.js';
import { perplexity } from '../src/eval.js';
import { qualityReport, reportHtml, type QualityReport } from '../src/report.js';
import { FORMATS } from '../src/formats/registry.js';
import { decodeToFloat32 } from '../src/codecs/index.js';

const MODEL = join(ROOT, 'assets', 'stories260K');
const TEXT = join(ROOT, 'assets', 'text', 'tinystories_eval.txt');
const WINDOWS = 3;
let tmp: string;
const reports = new Map<string, QualityReport>();

beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'rxq-report-'));
  const calibration = await loadCalibration(join(ROOT, 'assets', 'text', 'tinystories_calib.txt'), MODEL, { samples: 4, seqLen: 128 });
  for (const format of ['fp8', 'nvfp4'] as const) {
    await exportCheckpoint({ model: MODEL, format, out: join(tmp, format), calibration, workers: 0 });
    reports.set(format, await qualityReport(MODEL, join(tmp, format), { text: TEXT, maxWindows: WINDOWS }));
  }
}, 120_000);
afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});

/** Each window's logits as `eval` computes them (copies). */
async function evalLogits(dir: string) {
  const out: { logits: Float32Array; T: number; V: number }[] = [];
  const r = await perplexity(dir, TEXT, { maxWindows: WINDOWS, onLogits: (_w, l, T, V) => out.push({ logits: l.slice(0, T * V), T, V }) });
  return { ppl: r.perplexity, tokens: r.tokens, windows: out };
}

function logSoftmax(row: Float32Array): Float64Array {
  let m = -Infinity;
  for (const v of row) m = Math.max(m, v);
  let s = 0;
  for (const v of row) s += Math.exp(v - m);
  const lz = m + Math.log(s);
  return Float64Array.from(row, (v) => v - lz);
}

describe('rxquant report', () => {
  for (const format of ['fp8', 'nvfp4'] as const) {
    it(`${format}: perplexities as eval gives them, KL divergence and top-1 agreement recomputed from eval's logits`, async () => {
      const r = reports.get(format)!;
      const s = await evalLogits(MODEL), e = await evalLogits(join(tmp, format));
      expect(r.perplexity.source).toBeCloseTo(s.ppl, 10);
      expect(r.perplexity.export).toBeCloseTo(e.ppl, 10);
      expect(r.tokens).toBe(s.tokens);
      // positions 0 .. T-2 of each window predict a token (the protocol's windows: BOS + 511 ids)
      let kl = 0, agree = 0, n = 0;
      for (let w = 0; w < s.windows.length; w++) {
        const { logits: a, T, V } = s.windows[w]!;
        const b = e.windows[w]!.logits;
        for (let t = 0; t < T - 1; t++) {
          const p = logSoftmax(a.subarray(t * V, (t + 1) * V)), q = logSoftmax(b.subarray(t * V, (t + 1) * V));
          let k = 0, ap = 0, aq = 0;
          for (let v = 0; v < V; v++) {
            k += Math.exp(p[v]!) * (p[v]! - q[v]!);
            if (p[v]! > p[ap]!) ap = v;
            if (q[v]! > q[aq]!) aq = v;
          }
          kl += k;
          agree += ap === aq ? 1 : 0;
          n++;
        }
      }
      expect(n).toBe(r.tokens);
      expect(Math.abs(r.kld_mean - kl / n) / (kl / n)).toBeLessThan(1e-9);
      expect(r.top1_agreement).toBe(agree / n);
      expect(r.kld_mean).toBeGreaterThan(0);
      // 4-bit loses more than 8-bit
      if (format === 'nvfp4') expect(r.kld_mean).toBeGreaterThan(reports.get('fp8')!.kld_mean);
    });

    it(`${format}: each quantized linear's weight error from the stored bytes, dequantized with the format record`, async () => {
      const r = reports.get(format)!;
      const src = await readAll(join(MODEL, 'model.safetensors'));
      const exp = await readAll(join(tmp, format, 'model.safetensors'));
      const linears = r.layers.flatMap((l) => l.linears);
      // stories260K: 5 layers x 7 linears; in nvfp4 down_proj (in_features 172, not a multiple of 16) stays F32
      expect(linears.length).toBe(format === 'fp8' ? 35 : 30);
      for (const l of linears) {
        const w = exp.get(`${l.module}.weight`)!, ws = exp.get(`${l.module}.weight_scale`)!, ws2 = exp.get(`${l.module}.weight_scale_2`);
        const deq = FORMATS[format].dequantize(w.bytes, w.shape, ws.bytes, ws2 ? new DataView(ws2.bytes.buffer, ws2.bytes.byteOffset).getFloat32(0, true) : undefined).w;
        const ref = decodeToFloat32(src.get(`${l.module}.weight`)!.bytes, 'F32');
        let s = 0, e = 0;
        for (let i = 0; i < ref.length; i++) (s += ref[i]! ** 2), (e += (deq[i]! - ref[i]!) ** 2);
        expect(Math.abs(l.relRmsError - Math.sqrt(e / s)) / Math.sqrt(e / s), l.module).toBeLessThan(1e-12);
        expect(l.snrDb).toBeCloseTo(10 * Math.log10(s / e), 9);
      }
      for (const l of r.layers) expect(l.outputRelError).toBeGreaterThan(0);
    });
  }

  it('the page: one bar per layer in each chart, one heat-map cell per quantized linear, no script, no network', () => {
    const html = reportHtml(reports.get('nvfp4')!);
    expect(html.match(/<rect class="bar"/g)).toHaveLength(2 * 5);
    expect(html.match(/<rect class="cell"/g)).toHaveLength(30);
    expect(html).not.toMatch(/<script|https?:\/\//);
  });

  const browser = ['chromium', 'chromium-browser', 'google-chrome'].find((b) => spawnSync('which', [b]).status === 0);
  it.runIf(browser !== undefined)('renders in headless chromium: the charts are in the rendered DOM and the screenshot is a full page', async () => {
    const page = join(tmp, 'report.html');
    await writeFile(page, reportHtml(reports.get('nvfp4')!));
    const flags = ['--headless', '--no-sandbox', '--disable-gpu', '--hide-scrollbars', '--window-size=960,1400'];
    const dom = execFileSync(browser!, [...flags, '--dump-dom', `file://${page}`], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
    expect(dom.match(/<rect class="bar"/g)).toHaveLength(10);
    expect(dom.match(/<rect class="cell"/g)).toHaveLength(30);
    const png = join(tmp, 'report.png');
    execFileSync(browser!, [...flags, `--screenshot=${png}`, `file://${page}`], { stdio: 'ignore' });
    const b = await readFile(png);
    expect(b.subarray(1, 4).toString()).toBe('PNG');
    expect([b.readUInt32BE(16), b.readUInt32BE(20)]).toEqual([960, 1400]); // IHDR width, height
    expect(b.length).toBeGreaterThan(20_000); // charts and text, not a blank page (~1 KB)
  });
  if (!browser) it.skip('renders in headless chromium (no chromium installed: apt-get install chromium)', () => undefined);
});
