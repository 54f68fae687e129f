/** Which engines load which quant_algo (spec engines.md §1, §5, §6.13-14), for `plan` and `verify`. */
export interface EngineSupport {
  engine: 'vLLM' | 'SGLang' | 'TensorRT-LLM';
  loads: boolean;
  note: string;
}

export function engineSupport(quantAlgo: string): EngineSupport[] {
  switch (quantAlgo) {
    case 'FP8':
      return [
        { engine: 'vLLM', loads: true, note: '>= 0.10.1; FP8 GEMMs need SM89+ (Ada/Hopper), emulated on SM80 in recent releases' },
        { engine: 'SGLang', loads: true, note: '>= 0.4.10; SM89+' },
        { engine: 'TensorRT-LLM', loads: true, note: '>= 1.2.0; SM89+' },
      ];
    case 'NVFP4':
      return [
        { engine: 'vLLM', loads: true, note: '>= 0.10.1; W4A4 needs Blackwell (SM100+), else the Marlin weight-only fallback' },
        { engine: 'SGLang', loads: true, note: '>= 0.4.10; Blackwell, or --fp4-gemm-backend marlin on SM80-90' },
        { engine: 'TensorRT-LLM', loads: true, note: '>= 1.2.0; Blackwell (SM100+)' },
      ];
    case 'fp8_pb_wo':
      return [
        { engine: 'vLLM', loads: true, note: 'vLLM with PR #30957 (2025-12) or later; 128x128 block FP8' },
        { engine: 'SGLang', loads: false, note: 'not supported (SGLang takes only FP8 / NVFP4)' },
        { engine: 'TensorRT-LLM', loads: true, note: '1.x, mapped to FP8_BLOCK_SCALES' },
      ];
    case 'NVFP4_AWQ':
    case 'W4A16_AWQ':
    case 'W4A8_AWQ':
      return [
        { engine: 'vLLM', loads: false, note: 'the AWQ family is not in vLLM\'s ModelOpt loader' },
        { engine: 'SGLang', loads: quantAlgo === 'W4A16_AWQ', note: quantAlgo === 'W4A16_AWQ' ? 'experimental' : 'not supported' },
        {
          engine: 'TensorRT-LLM',
          loads: true,
          note: quantAlgo === 'NVFP4_AWQ' ? 'Blackwell (SM100+)' : quantAlgo === 'W4A8_AWQ' ? 'SM89+ (FP8 activations)' : 'SM80+',
        },
      ];
    default:
      return [
        { engine: 'vLLM', loads: false, note: `unknown quant_algo ${quantAlgo}` },
        { engine: 'SGLang', loads: false, note: `unknown quant_algo ${quantAlgo}` },
        { engine: 'TensorRT-LLM', loads: false, note: `unknown quant_algo ${quantAlgo}` },
      ];
  }
}
