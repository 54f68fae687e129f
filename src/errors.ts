/**
 * Typed errors. Every failure a user can cause (bad file, bad option, unsupported model)
 * is one of these; the CLI prints `error: <message>` on one line and exits non-zero.
 * Anything else is a bug and is printed with its stack.
 */
export class RxquantError extends Error {
  /** Process exit code the CLI uses for this error. */
  readonly exitCode: number = 1;
  constructor(message: string) {
    super(message);
    this.name = new.target.name;
  }
}

/** A safetensors file whose header or layout is inconsistent. Names the file (and tensor). */
export class SafetensorsFormatError extends RxquantError {
  constructor(readonly file: string, detail: string, readonly tensor?: string) {
    super(`${file}: ${tensor !== undefined ? `tensor "${tensor}": ` : ''}${detail}`);
  }
}

/** A checkpoint folder that is not a usable HF checkpoint (missing files, bad index, bad config). */
export class CheckpointError extends RxquantError {
  constructor(readonly path: string, detail: string) {
    super(`${path}: ${detail}`);
  }
}

/** A model_type or a layer layout that rxquant does not know how to quantize. */
export class UnsupportedModelError extends RxquantError {}

/** Weights or statistics that cannot be quantized (NaN/Inf, missing statistics, bad shapes). */
export class QuantizationError extends RxquantError {}

/** Bad command-line or API option. */
export class UsageError extends RxquantError {
  override readonly exitCode = 2;
}

/** The output location cannot be written (exists, not writable, disk full). */
export class OutputError extends RxquantError {}

/** Calibration data that is missing, empty or unreadable. */
export class CalibrationDataError extends RxquantError {}

/** An export that fails `rxquant verify`. */
export class VerificationError extends RxquantError {}
