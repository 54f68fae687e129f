export { readCheckpoint, type ReadCheckpointOptions } from './readCheckpoint.js';
export { quantize, type QuantizeOptions } from './quantize.js';
export { pack, packUnit } from './pack.js';
export { writeShards, type WriteShardsOptions, type WriteEvent } from './writeShards.js';
export { calibrate, type CalibrateProgress, type CalibrateOptions } from './calibrate.js';
