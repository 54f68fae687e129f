/**
 * The `nvfp4_awq` export format (quant_algo "NVFP4_AWQ"): NVFP4 (nvfp4.ts) of weights divided by an
 * AWQ `pre_quant_scale` per input channel. Fused siblings fold their scale into the norm before
 * them; a lone linear also folds into the linear before it (o_proj into v_proj, down_proj into
 * up_proj) where the family allows (spec §8.3); what is left is stored as `pre_quant_scale`.
 */
import type { QuantFormat } from './format.js';
import { fakeQuantizeNvfp4InPlace, nvfp4, nvfp4GlobalScale } from './nvfp4.js';
import { amaxOf } from './common.js';

export const nvfp4_awq: QuantFormat = {
  ...nvfp4,
  name: 'nvfp4_awq',
  quantAlgo: 'NVFP4_AWQ',
  awq: true,
  foldsIntoPreviousLinear: true,
  configGroups: undefined, // ModelOpt's flat config has config_groups for FP8 and NVFP4 only
  fused: undefined,
  description: 'NVFP4 with AWQ pre-quant scales',
  fakeQuantize: (w, N, K) => fakeQuantizeNvfp4InPlace(w.slice(), N, K, nvfp4GlobalScale(amaxOf(w))),
  fakeQuantizeInPlace: (w, N, K, amax, clip = 1) => fakeQuantizeNvfp4InPlace(w, N, K, nvfp4GlobalScale(clip === 1 ? amax : Math.fround(amax * clip))),
  awqClip: 'global',
  engines: [
    { engine: 'vLLM', loads: false, note: "the AWQ family is not in vLLM's ModelOpt loader" },
    { engine: 'SGLang', loads: false, note: 'not supported' },
    { engine: 'TensorRT-LLM', loads: true, note: 'Blackwell (SM100+)' },
  ],
};
