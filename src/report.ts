/**
 * `rxquant report SRC EXPORT --text FILE`: what quantization did, as numbers and as a page.
 *  - perplexity of the source and of the export on the text (as `eval` computes each: same windows,
 *    the export run as the engines run it), the mean KL divergence KL(P_source || P_export) of the
 *    next-token distributions over every scored position, and how often their top-1 tokens agree;
 *  - per quantized linear: the relative RMS error ||W_q - W|| / ||W|| of the dequantized export weight
 *    against the source weight, and the SNR 10·log10(||W||² / ||W_q - W||²) in dB (AWQ formats store
 *    smoothed weights whose scales were folded into norms and other linears, so theirs are not
 *    comparable one by one and are left out: their layers' output errors below still apply);
 *  - per layer: the relative error ||out_q - out|| / ||out|| of the layer's output when only that
 *    layer runs quantized, on the first windows (the source's own hidden states as its input).
 * The page is self-contained HTML with inline SVG charts (no script, no network): the summary, SNR
 * bars per layer, layer-output error bars, and a heat map of the linears' errors by layer and role.
 */
import { rename, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { openModel } from './model.js';
import { openCheckpoint } from './safetensors/checkpoint.js';
import { openRunner, scoreNextTokens, textWindows, type ModelRunner } from './eval.js';
import { loadLinear, weightSource } from './forward/weights.js';
import { formatByQuantAlgo } from './formats/registry.js';
import type { GemmEngine } from './forward/gemm.js';
import { CheckpointError } from './errors.js';

export interface LinearError {
  module: string;
  /** The linear's role in its layer ("q", "gate", "experts.down" for every expert's down_proj, ...). */
  role: string;
  relRmsError: number;
  snrDb: number;
}

export interface LayerError {
  index: number;
  /** ||out_q - out|| / ||out|| of the layer alone quantized, over the sampled windows. */
  outputRelError: number;
  /** Mean SNR of the layer's quantized linears (null when none is comparable). */
  meanSnrDb: number | null;
  linears: LinearError[];
}

export interface QualityReport {
  source: string;
  export: string;
  quantAlgo: string;
  text: string;
  windows: number;
  tokens: number;
  perplexity: { source: number; export: number };
  kld_mean: number;
  top1_agreement: number;
  /** Why per-linear weight errors are absent, when they are. */
  weightErrorNote?: string;
  /** Windows the per-layer output errors were measured on. */
  layerWindows: number;
  layers: LayerError[];
}

export interface ReportOptions {
  text: string;
  /** Score only the first N windows (default: all). */
  maxWindows?: number;
  /** Windows for the per-layer output errors (default 2). */
  layerWindows?: number;
  gemm?: GemmEngine;
}

/** Role names for the heat map's columns: each expert's projection counts under "experts.<proj>". */
export const roleColumn = (role: string): string => role.replace(/^e\d+\./, 'experts.');

export async function qualityReport(sourceDir: string, exportDir: string, o: ReportOptions): Promise<QualityReport> {
  const windows = await textWindows(sourceDir, o.text, o);
  const src = await openRunner(sourceDir, o.gemm);
  let exp: ModelRunner | undefined;
  try {
    exp = await openRunner(exportDir, o.gemm);
    if (!exp.quantAlgo) throw new CheckpointError(exportDir, 'not an export: config.json has no quantization_config.quant_algo');
    if (exp.cfg.numLayers !== src.cfg.numLayers || exp.V !== src.V || exp.cfg.hiddenSize !== src.cfg.hiddenSize) {
      throw new CheckpointError(exportDir, `is not an export of ${sourceDir}: ${exp.cfg.numLayers} layers / hidden ${exp.cfg.hiddenSize} / vocab ${exp.V} against ${src.cfg.numLayers} / ${src.cfg.hiddenSize} / ${src.V}`);
    }
    // next-token distributions, window by window
    let nllS = 0, nllE = 0, kld = 0, agree = 0, scored = 0;
    const V = src.V;
    for (const w of windows) {
      const ls = (await src.logits(w.input)).slice(0, w.targets.length * V);
      const le = await exp.logits(w.input);
      nllS += scoreNextTokens(ls, V, w.targets);
      nllE += scoreNextTokens(le, V, w.targets);
      for (let t = 0; t < w.targets.length; t++) {
        const r = klAndTop1(ls, le, t * V, V);
        kld += r.kl;
        agree += r.sameTop1 ? 1 : 0;
      }
      scored += w.targets.length;
    }
    // each layer alone quantized, on the source's hidden states
    const layerWindows = Math.min(o.layerWindows ?? 2, windows.length);
    const num = new Float64Array(src.cfg.numLayers), den = new Float64Array(src.cfg.numLayers);
    for (const w of windows.slice(0, layerWindows)) {
      const T = w.input.length;
      let h = await src.embed(w.input);
      for (let i = 0; i < src.cfg.numLayers; i++) {
        const q = await exp.layer(i, h.slice(), T);
        h = await src.layer(i, h, T);
        for (let j = 0; j < h.length; j++) {
          num[i] += (q[j]! - h[j]!) ** 2;
          den[i] += h[j]! ** 2;
        }
      }
    }
    const { linears, note } = await weightErrors(sourceDir, exportDir, exp.quantAlgo);
    const layers: LayerError[] = Array.from({ length: src.cfg.numLayers }, (_, i) => {
      const mine = linears.filter((l) => l.layer === i).map(({ layer: _l, ...rest }) => rest);
      return {
        index: i,
        outputRelError: Math.sqrt(num[i]! / den[i]!),
        meanSnrDb: mine.length ? mine.reduce((a, l) => a + l.snrDb, 0) / mine.length : null,
        linears: mine,
      };
    });
    return {
      source: sourceDir,
      export: exportDir,
      quantAlgo: exp.quantAlgo,
      text: o.text,
      windows: windows.length,
      tokens: scored,
      perplexity: { source: Math.exp(nllS / scored), export: Math.exp(nllE / scored) },
      kld_mean: kld / scored,
      top1_agreement: agree / scored,
      ...(note ? { weightErrorNote: note } : {}),
      layerWindows,
      layers,
    };
  } finally {
    await exp?.close();
    await src.close();
  }
}

/** KL(P || Q) of the softmaxes of two logit rows at offset o, and whether their argmaxes agree. */
function klAndTop1(p: Float32Array, q: Float32Array, o: number, V: number): { kl: number; sameTop1: boolean } {
  let mp = -Infinity, mq = -Infinity, ap = 0, aq = 0;
  for (let v = 0; v < V; v++) {
    if (p[o + v]! > mp) (mp = p[o + v]!), (ap = v);
    if (q[o + v]! > mq) (mq = q[o + v]!), (aq = v);
  }
  let sp = 0, sq = 0;
  for (let v = 0; v < V; v++) {
    sp += Math.exp(p[o + v]! - mp);
    sq += Math.exp(q[o + v]! - mq);
  }
  const lzp = mp + Math.log(sp), lzq = mq + Math.log(sq);
  let kl = 0;
  for (let v = 0; v < V; v++) {
    const lp = p[o + v]! - lzp;
    kl += Math.exp(lp) * (lp - (q[o + v]! - lzq));
  }
  return { kl, sameTop1: ap === aq };
}

/** The quantized linears' weight errors (none for AWQ formats, with the reason). */
async function weightErrors(sourceDir: string, exportDir: string, quantAlgo: string): Promise<{ linears: (LinearError & { layer: number })[]; note?: string }> {
  const fmt = formatByQuantAlgo(quantAlgo);
  if (fmt?.awq) return { linears: [], note: `${quantAlgo} stores AWQ-smoothed weights (their scales folded into norms and neighbouring linears): compared through the layer outputs only` };
  const model = await openModel(sourceDir);
  const ck = await openCheckpoint(exportDir);
  try {
    const srcW = weightSource(model);
    const expW = weightSource(ck, quantAlgo);
    const out: (LinearError & { layer: number })[] = [];
    for (const layout of model.layers) {
      for (let j = 0; j < layout.linears.length; j++) {
        const m = layout.linears[j]!;
        if (!ck.tensors.has(`${m}.weight_scale`)) continue; // kept unquantized
        const a = (await loadLinear(srcW, m)).w;
        const b = (await loadLinear(expW, m)).w;
        let s = 0, e = 0;
        for (let i = 0; i < a.length; i++) {
          s += a[i]! * a[i]!;
          e += (b[i]! - a[i]!) ** 2;
        }
        out.push({ layer: layout.index, module: m, role: roleColumn(layout.roles[j]!), relRmsError: Math.sqrt(e / s), snrDb: 10 * Math.log10(s / e) });
      }
    }
    return { linears: out };
  } finally {
    await ck.close();
    await model.close();
  }
}

// ---------------------------------------------------------------------------------------------
// the page

const esc = (s: string) => s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);
const fmt = (x: number, d = 4) => (Number.isFinite(x) ? x.toFixed(d) : String(x));

/** Vertical bars, one per value, with the layer index under each (class "bar" on each bar). */
function barChart(id: string, title: string, values: (number | null)[], unit: string, color: string): string {
  const W = 720, H = 220, pad = 40;
  const finite = values.filter((v): v is number => v !== null && Number.isFinite(v));
  const max = Math.max(1e-12, ...finite.map((v) => Math.abs(v)));
  const bw = (W - 2 * pad) / Math.max(1, values.length);
  const bars = values
    .map((v, i) => {
      const x = pad + i * bw + bw * 0.1;
      if (v === null || !Number.isFinite(v)) return `<text x="${x}" y="${H - pad - 4}" font-size="9">n/a</text>`;
      const h = ((H - 2 * pad) * Math.abs(v)) / max;
      return `<rect class="bar" data-layer="${i}" x="${x.toFixed(1)}" y="${(H - pad - h).toFixed(1)}" width="${(bw * 0.8).toFixed(1)}" height="${h.toFixed(1)}" fill="${color}"><title>layer ${i}: ${fmt(v, 3)} ${unit}</title></rect>`;
    })
    .join('');
  const labels = values.map((_, i) => `<text x="${(pad + i * bw + bw / 2).toFixed(1)}" y="${H - pad + 14}" font-size="10" text-anchor="middle">${i}</text>`).join('');
  return `<figure><figcaption>${esc(title)}</figcaption><svg id="${id}" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" role="img">
<line x1="${pad}" y1="${H - pad}" x2="${W - pad}" y2="${H - pad}" stroke="#444"/>
<text x="4" y="${pad - 8}" font-size="10">${esc(fmt(max, 3))} ${esc(unit)}</text>${bars}${labels}
<text x="${W / 2}" y="${H - 6}" font-size="11" text-anchor="middle">layer</text></svg></figure>`;
}

/** Layers down, roles across, each cell colored by the linear's relative RMS error (class "cell"). */
function heatMap(r: QualityReport): string {
  const roles = [...new Set(r.layers.flatMap((l) => l.linears.map((x) => x.role)))];
  if (roles.length === 0) return `<p class="note">${esc(r.weightErrorNote ?? 'no quantized linear')}</p>`;
  const cell = 34, left = 50, top = 60;
  const all = r.layers.flatMap((l) => l.linears.map((x) => x.relRmsError));
  const max = Math.max(...all), min = Math.min(...all);
  const color = (e: number) => {
    const t = max > min ? (e - min) / (max - min) : 0.5; // light yellow (least) to dark red (most)
    return `rgb(${Math.round(255 - 80 * t)},${Math.round(240 - 200 * t)},${Math.round(170 - 150 * t)})`;
  };
  const cells = r.layers
    .flatMap((l) =>
      roles.map((role, c) => {
        const mine = l.linears.filter((x) => x.role === role);
        if (!mine.length) return '';
        const e = mine.reduce((a, x) => a + x.relRmsError, 0) / mine.length;
        return `<rect class="cell" x="${left + c * cell}" y="${top + l.index * cell}" width="${cell - 2}" height="${cell - 2}" fill="${color(e)}"><title>layer ${l.index} ${esc(role)}: ${(e * 100).toFixed(2)}%</title></rect>`;
      }),
    )
    .join('');
  const W = left + roles.length * cell + 20, H = top + r.layers.length * cell + 10;
  const heads = roles.map((role, c) => `<text x="${left + c * cell + cell / 2}" y="${top - 8}" font-size="10" text-anchor="start" transform="rotate(-40 ${left + c * cell + cell / 2} ${top - 8})">${esc(role)}</text>`).join('');
  const rows = r.layers.map((l) => `<text x="${left - 6}" y="${top + l.index * cell + cell / 2 + 3}" font-size="10" text-anchor="end">${l.index}</text>`).join('');
  return `<figure><figcaption>Weight error per linear (relative RMS, ${(min * 100).toFixed(2)}% light to ${(max * 100).toFixed(2)}% dark)</figcaption><svg id="heatmap" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" role="img">${heads}${rows}${cells}</svg></figure>`;
}

export function reportHtml(r: QualityReport): string {
  const d = (r.perplexity.export - r.perplexity.source) / r.perplexity.source;
  const row = (k: string, v: string) => `<tr><th>${esc(k)}</th><td>${esc(v)}</td></tr>`;
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>rxquant report: ${esc(basename(r.export))}</title>
<style>body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:900px}table{border-collapse:collapse}th,td{padding:4px 10px;border-bottom:1px solid #ddd;text-align:left}
figure{margin:18px 0}figcaption{font-weight:600;margin-bottom:6px}.note{color:#666}</style></head>
<body><h1>Quantization report</h1>
<p>${esc(r.export)} (${esc(r.quantAlgo)}) against ${esc(r.source)}</p>
<table id="summary">
${row('perplexity, source', fmt(r.perplexity.source))}
${row('perplexity, export', `${fmt(r.perplexity.export)} (${d >= 0 ? '+' : ''}${(d * 100).toFixed(2)}%)`)}
${row('mean KL divergence (source || export), nats per token', fmt(r.kld_mean, 6))}
${row('top-1 agreement', `${(r.top1_agreement * 100).toFixed(2)}%`)}
${row('text', `${r.text}: ${r.tokens} tokens in ${r.windows} windows`)}
</table>
${barChart('snr', 'Weight SNR per layer (mean over its quantized linears, dB)', r.layers.map((l) => l.meanSnrDb), 'dB', '#3b7dd8')}
${barChart('layer-error', `Layer output error with only that layer quantized (relative, ${r.layerWindows} window${r.layerWindows === 1 ? '' : 's'})`, r.layers.map((l) => l.outputRelError), '', '#d8703b')}
${heatMap(r)}
<p class="note">rxquant: the export runs as the engines run it (dequantized weights, pre_quant_scale, quantized activations).</p>
</body></html>
`;
}

/** Terminal summary lines. */
export function reportSummary(r: QualityReport): string[] {
  const d = (r.perplexity.export - r.perplexity.source) / r.perplexity.source;
  const worst = [...r.layers].sort((a, b) => b.outputRelError - a.outputRelError)[0];
  return [
    `perplexity ${fmt(r.perplexity.source)} -> ${fmt(r.perplexity.export)} (${d >= 0 ? '+' : ''}${(d * 100).toFixed(2)}%) on ${r.tokens} tokens`,
    `mean KL divergence ${fmt(r.kld_mean, 6)}, top-1 agreement ${(r.top1_agreement * 100).toFixed(2)}%`,
    ...(worst ? [`largest layer output error: layer ${worst.index} (${(worst.outputRelError * 100).toFixed(2)}%)`] : []),
  ];
}

/** Writes a file through a temporary name in the same folder, then renames it into place. */
export async function writeAtomically(path: string, data: string): Promise<void> {
  const tmp = join(dirname(path), `.${basename(path)}.rxquant-tmp`);
  await writeFile(tmp, data);
  await rename(tmp, path);
}
