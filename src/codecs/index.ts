export * from './float.js';
export * from './e4m3.js';
export * from './e2m1.js';
export * from './int4.js';
export * from './e8m0.js';
