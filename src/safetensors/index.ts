export * from './dtypes.js';
export * from './header.js';
export * from './file.js';
export * from './checkpoint.js';
export * from './writer.js';
export * from './size.js';
