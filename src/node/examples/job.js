#!/usr/bin/env node
'use strict';
// A workerpool job in Node.js: answers every request with its body in upper
// case. "progress:N" reports N steps of progress first; "sleep:MS" waits
// (and stops at once when the sender cancels).
//
//   groups:
//     - name: upper
//       type: job
//       processes: 2
//       command: [node, /path/to/src/node/examples/job.js]

const path = require('node:path');
const workerpool = require(path.join(__dirname, '..', 'workerpool.js'));
const {setTimeout: sleep} = require('node:timers/promises');

workerpool.serve(async (body, meta, request) => {
  const text = body.toString('utf8');
  if (text.startsWith('progress:')) {
    const steps = Number(text.slice(9));
    for (let n = 1; n <= steps; n += 1) request.progress(n / steps, `step ${n}`);
    return `done ${text}`;
  }
  if (text.startsWith('sleep:')) {
    await sleep(Number(text.slice(6)), undefined, {signal: request.signal});
    return 'slept';
  }
  if (text.startsWith('fail:')) throw new Error(text);
  if (text === 'pid') return String(process.pid);
  return text.toUpperCase();
});
