#!/usr/bin/env node
// Entry point: runs the compiled CLI (built by `npm ci` / `npm install` through the prepare script).
import { main } from '../dist/src/cli/main.js';

process.exitCode = await main(process.argv);
// Safety net: if a worker thread or a handle still holds the event loop after the command is done,
// leave anyway once output has had a moment to flush.
setTimeout(() => process.exit(), 2000).unref();
