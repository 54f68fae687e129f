/** Every export format rxquant writes, by `--format` name (each record is one file of this folder). */
import { UsageError } from '../errors.js';
import type { EngineSupport, LinearShape, QuantFormat } from './format.js';
import { fp8 } from './fp8.js';
import { fp8_pb_wo } from './fp8_pb_wo.js';
import { nvfp4 } from './nvfp4.js';
import { nvfp4_awq } from './nvfp4_awq.js';
import { int4_awq } from './int4_awq.js';
import { w4a8_awq } from './w4a8_awq.js';

export const FORMAT_NAMES = ['fp8', 'fp8_pb_wo', 'nvfp4', 'nvfp4_awq', 'int4_awq', 'w4a8_awq'] as const;
export type FormatName = (typeof FORMAT_NAMES)[number];

/** A format record whose name is one of FORMAT_NAMES. */
export type FormatSpec = QuantFormat & { name: FormatName };

export const FORMATS: Record<FormatName, FormatSpec> = {
  fp8: fp8 as FormatSpec,
  fp8_pb_wo: fp8_pb_wo as FormatSpec,
  nvfp4: nvfp4 as FormatSpec,
  nvfp4_awq: nvfp4_awq as FormatSpec,
  int4_awq: int4_awq as FormatSpec,
  w4a8_awq: w4a8_awq as FormatSpec,
};

export function formatSpec(name: string): FormatSpec {
  const f = (FORMATS as Record<string, FormatSpec>)[name.toLowerCase()];
  if (!f) throw new UsageError(`unknown format "${name}"; choose one of: ${FORMAT_NAMES.join(', ')}`);
  return f;
}

/** The record whose quant_algo this is (as config files spell it), if rxquant knows it. */
export function formatByQuantAlgo(quantAlgo: string | undefined): FormatSpec | undefined {
  return Object.values(FORMATS).find((f) => f.quantAlgo === quantAlgo);
}

/**
 * Which engines load a quant_algo; an unknown one loads nowhere. Given the export's quantized
 * linears, an engine whose loader refuses their shapes is marked as not loading, with the reasons.
 */
export function engineSupport(quantAlgo: string, linears?: readonly LinearShape[]): EngineSupport[] {
  const f = formatByQuantAlgo(quantAlgo);
  if (f) {
    const blockers = linears ? f.loadBlockers(linears) : [];
    return f.engines.map((e) => {
      const mine = blockers.filter((b) => b.engine === e.engine).map((b) => b.reason);
      return mine.length === 0 ? { ...e } : { ...e, loads: false, note: `${e.note}; but not this export: ${mine[0]}${mine.length > 1 ? ` (and ${mine.length - 1} more)` : ''}`, blockers: mine };
    });
  }
  return (['vLLM', 'SGLang', 'TensorRT-LLM'] as const).map((engine) => ({ engine, loads: false, note: `unknown quant_algo ${quantAlgo}` }));
}
