'use strict';
// A sender for the tests: sends the requests of argv[2] (a JSON array of
// {group, body, timeout, cancelAfter}) at once, prints each reply as a JSON
// line, then stops.
const path = require('node:path');
const wp = require(path.join(__dirname, '..', '..', 'workerpool.js'));

const client = new wp.Client();
const requests = JSON.parse(process.argv[2]);
Promise.all(requests.map(async (r, n) => {
  const controller = new AbortController();
  if (r.cancelAfter !== undefined) setTimeout(() => controller.abort(), r.cancelAfter);
  const reply = await client.send(r.group, r.body, {timeout: r.timeout, signal: controller.signal,
                                                    meta: r.meta, priority: r.priority});
  process.stdout.write(JSON.stringify({n, ok: reply.ok, code: reply.code, text: reply.text,
                                       meta: reply.meta}) + '\n');
})).then(() => {
  client.stop();
  client.onFinish(() => process.exit(0));
});
