#!/usr/bin/env node
'use strict';
// A workerpool service in Node.js that serves its reactors by sending to
// another group itself: a request "GROUP PAYLOAD" is sent on to GROUP, and
// the answer is a JSON object of what came back. Its links to GROUP are made
// by connect (docs/PROTOCOL.md, "Links by connect"); a C++ or Python job at
// the other end gets them as usual, by descriptor.
//
//   groups:
//     - name: relay
//       type: service
//       command: [node, /path/to/src/node/examples/sender.js]
//       routes_to: [echo]

const path = require('node:path');
const workerpool = require(path.join(__dirname, '..', 'workerpool.js'));

workerpool.serve(async (body, meta, request) => {
  const text = body.toString('utf8');
  const space = text.indexOf(' ');
  const group = space < 0 ? text : text.slice(0, space);
  const payload = space < 0 ? '' : text.slice(space + 1);
  const reply = await request.client.send(group, payload,
                                          {timeout: 30000, signal: request.signal});
  return JSON.stringify({ok: reply.ok, code: reply.ok ? null : reply.code,
                         text: reply.text});
});
