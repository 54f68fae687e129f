#!/usr/bin/env node
// Entry point: runs the compiled CLI (built by `npm ci` / `npm install` through the prepare script).
import { main } from '../dist/src/cli/main.js';

process.exitCode = await main(process.argv);
