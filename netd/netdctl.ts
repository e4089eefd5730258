#!/usr/bin/env node
import { main } from './cli.js';

/** The `netdctl` executable (see cli.ts). */
void main().then((code) => process.exit(code));
