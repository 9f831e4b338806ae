#!/usr/bin/env node
'use strict';
require('../dist/src/cli.js').main(process.argv).then(
  (code) => { process.exitCode = code; },
  (err) => { process.stderr.write(`img2pose: ${err && err.message ? err.message : String(err)}\n`); process.exitCode = 1; },
);
