'use strict';
// The Node.js library against a fake pool (no Watcher): hello, config,
// links by connect, requests, progress, cancel, drain, SIGTERM, max_requests,
// heartbeats, EOF of the pool channel, sending, and garbage from the pool
// and on links.
const assert = require('node:assert/strict');
const path = require('node:path');
const {test} = require('node:test');
const wp = require('../workerpool.js');
const {FakePool} = require('./fake_pool.js');

const T = wp.FrameType;
const E = wp.ErrorCode;
const JOB = path.join(__dirname, '..', 'examples', 'job.js');
const SEND = path.join(__dirname, 'children', 'send.js');

function frame(type, body = '', id = 0, aux = 0, meta = null) {
  return wp.encodeFrame(type, id, aux, meta, body);
}

function json(f) {
  return JSON.parse(f.body.toString());
}

async function started(script = JOB, options = {}) {
  const pool = new FakePool(script, options);
  const hello = await pool.reader.read();
  assert.equal(hello.type, T.HELLO);
  assert.deepEqual(json(hello), {pid: pool.child.pid, protocol: 1, links: 'connect'});
  return pool;
}

test('frames: encode and decode in any split; garbage is a ProtocolError', () => {
  const bytes = Buffer.concat([frame(T.REQUEST, 'body', 7, 0xFFFFFFFB, '{"k":1}'),
                               frame(T.REPLY, '', 2**40)]);
  const decoder = new wp.FrameDecoder();
  const got = [];
  for (const b of bytes) {
    decoder.feed(Buffer.from([b]));
    for (let f = decoder.next(); f !== null; f = decoder.next()) got.push(f);
  }
  assert.equal(got.length, 2);
  assert.deepEqual([got[0].type, got[0].id, got[0].aux | 0, got[0].meta.toString(),
                    got[0].body.toString()], [T.REQUEST, 7, -5, '{"k":1}', 'body']);
  assert.equal(got[1].id, 2**40);
  for (const bad of [
    (() => { const b = frame(T.REPLY, 'x'); b[4] = 2; return b; })(),
    (() => { const b = frame(T.REPLY, 'x'); b.writeUInt32LE(16 * 1024 * 1024 + 1, 0); return b; })(),
    (() => { const b = frame(T.REPLY, 'x'); b.writeUInt32LE(5, 20); return b; })(),
    (() => { const b = frame(T.REPLY, 'x'); b[5] = 99; return b; })(),
  ]) {
    const d = new wp.FrameDecoder();
    d.feed(bad);
    assert.throws(() => d.next(), wp.ProtocolError);
  }
});

test('a job: config, requests on a connect link, meta, priority, errors, drain', async (t) => {
  const pool = await started();
  t.after(() => pool.close());
  pool.send(T.CONFIG, {max_inflight: 1, heartbeat_ms: 0});
  const a = await pool.addLink('server', 'front', 0, 1111);
  const b = await pool.addLink('server', 'front', 1, 2222);
  const frames = [];
  for (let n = 0; n < 50; n += 1) frames.push(frame(T.REQUEST, `a${n}`, n + 1, n, '{"k": 1}'));
  a.write(Buffer.concat(frames));
  const got = new Map();
  while (got.size < 50) {
    const f = await a.reader.read();
    assert.equal(f.type, T.REPLY, f.body.toString());
    got.set(f.id, f.body.toString());
  }
  for (let n = 0; n < 50; n += 1) assert.equal(got.get(n + 1), `A${n}`);
  b.write(frame(T.REQUEST, 'fail: no', 8));
  let f = await b.reader.read();
  assert.deepEqual([f.type, f.id, f.aux, f.body.toString()], [T.ERROR, 8, E.HANDLER_ERROR, 'fail: no']);
  // Drain: no exit while a sender is linked; requests still answered.
  pool.send(T.DRAIN, {});
  b.end();
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(pool.child.exitCode, null, 'exited with a sender linked');
  a.write(frame(T.REQUEST, 'late', 99));
  f = await a.reader.read();
  assert.deepEqual([f.type, f.id, f.body.toString()], [T.REPLY, 99, 'LATE']);
  a.end();
  assert.deepEqual(await pool.waitExit(), {code: 0, signal: null}, pool.output);
});

test('progress, cancel of a running and of a queued request, priority order', async (t) => {
  const pool = await started();
  t.after(() => pool.close());
  pool.send(T.CONFIG, {max_inflight: 1});
  const link = await pool.addLink();
  link.write(frame(T.REQUEST, 'progress:3', 1));
  const progress = [];
  for (;;) {
    const f = await link.reader.read();
    if (f.type === T.PROGRESS) {
      progress.push([f.aux, f.body.toString()]);
      continue;
    }
    assert.deepEqual([f.type, f.body.toString()], [T.REPLY, 'done progress:3']);
    break;
  }
  assert.deepEqual(progress, [[333333, 'step 1'], [666666, 'step 2'], [1000000, 'step 3']]);
  // One running, three queued in the job (max_inflight 1): a cancelled
  // queued one answers at once; the rest start lowest priority first.
  link.write(Buffer.concat([frame(T.REQUEST, 'sleep:60000', 10),
                            frame(T.REQUEST, 'low', 11, 9),
                            frame(T.REQUEST, 'high', 12, (-5) >>> 0),
                            frame(T.REQUEST, 'gone', 13, 0),
                            frame(T.CANCEL, '', 13)]));
  let f = await link.reader.read();
  assert.deepEqual([f.type, f.id, f.aux], [T.ERROR, 13, E.CANCELLED]);
  link.write(frame(T.CANCEL, '', 10));
  const answers = [];
  for (let n = 0; n < 3; n += 1) {
    f = await link.reader.read();
    answers.push([f.type, f.id, f.aux, f.body.toString()]);
  }
  assert.deepEqual(answers, [[T.ERROR, 10, E.CANCELLED, 'cancelled'], [T.REPLY, 12, 0, 'HIGH'],
                             [T.REPLY, 11, 0, 'LOW']]);
});

test('SIGTERM is a drain; EOF of the pool channel exits', async (t) => {
  const pool = await started();
  t.after(() => pool.close());
  pool.send(T.CONFIG, {max_inflight: 2});
  const link = await pool.addLink();
  link.write(frame(T.REQUEST, 'sleep:300', 1));
  await new Promise((r) => setTimeout(r, 50));
  pool.child.kill('SIGTERM');
  let f = await link.reader.read();
  assert.deepEqual([f.type, f.body.toString()], [T.REPLY, 'slept']);
  link.write(frame(T.REQUEST, 'y', 2));
  f = await link.reader.read();
  assert.deepEqual([f.type, f.body.toString()], [T.REPLY, 'Y']);
  link.end();
  assert.deepEqual(await pool.waitExit(), {code: 0, signal: null}, pool.output);

  const other = await started();
  t.after(() => other.close());
  other.send(T.CONFIG, {max_inflight: 1});
  other.channel.end();
  assert.deepEqual(await other.waitExit(), {code: 0, signal: null});
  assert.match(other.output, /exiting/);
});

test('max_requests: stats go out as soon as the limit is reached; heartbeats', async (t) => {
  const pool = await started();
  t.after(() => pool.close());
  pool.send(T.CONFIG, {max_inflight: 1, max_requests: 3, heartbeat_ms: 150});
  assert.ok(await pool.reader.readType(T.HEARTBEAT), 'no heartbeat');
  const link = await pool.addLink();
  for (let n = 1; n <= 3; n += 1) {
    link.write(frame(T.REQUEST, `r${n}`, n));
    await link.reader.read();
  }
  const stats = json(await pool.reader.readType(T.STATS, 500));
  assert.equal(stats.served, 3);
  assert.equal(stats.serving, 0);
});

test('garbage from the pool: wrong config types fall back; a broken frame ends it', async (t) => {
  const pool = await started();
  t.after(() => pool.close());
  pool.send(T.CONFIG, {max_inflight: 'x', heartbeat_ms: {}, max_requests: -4});
  pool.channel.write(frame(T.PEER_ADDED, '[1,2'));  // no path: ignored
  pool.send(T.PEER_ADDED, {role: 'server', path: 7});
  pool.send(T.PEER_GONE, {pid: 'x'});
  const link = await pool.addLink();
  link.write(frame(T.REQUEST, 'still', 1));
  const f = await link.reader.read();
  assert.equal(f.body.toString(), 'STILL');
  assert.match(pool.output, /without a path/);
  const broken = frame(T.CONFIG, '{}');
  broken[4] = 9;  // wire version 9
  pool.channel.write(broken);
  assert.deepEqual(await pool.waitExit(), {code: 0, signal: null});
  assert.match(pool.output, /bad frame from the pool: wire version 9/);
});

test('garbage on a link closes that link only', async (t) => {
  const pool = await started();
  t.after(() => pool.close());
  pool.send(T.CONFIG, {max_inflight: 1});
  const bad = await pool.addLink('server', 'front', 0, 1);
  const good = await pool.addLink('server', 'front', 1, 2);
  bad.write(Buffer.from('GET / HTTP/1.1\r\n\r\n garbage garbage garbage'));
  assert.equal(await bad.reader.read(), null, 'the bad link was not closed');
  good.write(frame(T.REQUEST, 'fine', 1));
  const f = await good.reader.read();
  assert.equal(f.body.toString(), 'FINE');
  assert.match(pool.output, /bad frame from front\[0\]/);
});

test('a sender: route_open, links by connect, replies, refused, died, timeout', async (t) => {
  const requests = [
    {group: 'echo', body: 'one', meta: {m: 1}},
    {group: 'echo', body: 'two', priority: 3},
    {group: 'nope', body: 'x'},
    {group: 'echo', body: 'dies'},
    {group: 'echo', body: 'slow', cancelAfter: 200},
  ];
  const pool = await started(SEND, {args: [JSON.stringify(requests)]});
  t.after(() => pool.close());
  pool.send(T.CONFIG, {max_inflight: 1});
  const opened = new Set();
  for (let n = 0; n < 2; n += 1) opened.add(json(await pool.reader.readType(T.ROUTE_OPEN)).group);
  assert.deepEqual([...opened].sort(), ['echo', 'nope']);
  pool.send(T.ROUTE_REFUSED, {group: 'nope', error: 'routes_to of js does not name nope'});
  const link = await pool.addLink('sender', 'echo', 0, 4242);
  pool.send(T.ROUTE_OPENED, {group: 'echo', max_inflight: 8, queue_limit: 10,
                             request_timeout_ms: 30000});
  const seen = new Map();
  while (seen.size < 4) {
    const f = await link.reader.read();
    if (f.type === T.REQUEST) seen.set(f.body.toString(), f);
  }
  assert.equal(seen.get('one').meta.toString(), '{"m":1}');
  assert.equal(seen.get('two').aux, 3);
  link.write(frame(T.REPLY, 'ONE', seen.get('one').id, 0, '{"r":2}'));
  link.write(frame(T.ERROR, 'bad', seen.get('two').id, E.HANDLER_ERROR));
  // 'slow' is cancelled by the sender: a cancel frame arrives.
  const cancel = await link.reader.read();
  assert.deepEqual([cancel.type, cancel.id], [T.CANCEL, seen.get('slow').id]);
  link.write(frame(T.ERROR, 'cancelled', cancel.id, E.CANCELLED));
  // Its server dies with 'dies' in flight.
  pool.send(T.PEER_GONE, {group: 'echo', index: 0, pid: 4242, how: 'killed by signal SIGKILL (9)'});
  assert.deepEqual(await pool.waitExit(), {code: 0, signal: null}, pool.output);
  const replies = pool.output.trim().split('\n').filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l)).sort((x, y) => x.n - y.n);
  assert.deepEqual(replies.map((r) => [r.ok, r.code]),
                   [[true, 0], [false, E.HANDLER_ERROR], [false, E.REFUSED],
                    [false, E.WORKER_DIED], [false, E.CANCELLED]]);
  assert.deepEqual(replies[0].meta, {r: 2});
  assert.equal(replies[0].text, 'ONE');
  assert.match(replies[2].text, /routes_to/);
  assert.match(replies[3].text, /SIGKILL/);
});

test('a sender: a server that times out is reported with kill_peer', async (t) => {
  const pool = await started(SEND, {args: [JSON.stringify([{group: 'echo', body: 'hang'}])]});
  t.after(() => pool.close());
  pool.send(T.CONFIG, {max_inflight: 1});
  await pool.reader.readType(T.ROUTE_OPEN);
  const link = await pool.addLink('sender', 'echo', 0, 777);
  pool.send(T.ROUTE_OPENED, {group: 'echo', max_inflight: 1, queue_limit: 10,
                             request_timeout_ms: 200});
  assert.equal((await link.reader.read()).type, T.REQUEST);
  const kill = json(await pool.reader.readType(T.KILL_PEER));
  assert.equal(kill.pid, 777);
  assert.match(kill.reason, /timed out after 200ms/);
  assert.deepEqual(await pool.waitExit(), {code: 0, signal: null}, pool.output);
  assert.match(pool.output, /"code":3/);
});

test('both ends connect: the server listens and checks the token', async (t) => {
  const fs = require('node:fs');
  const net = require('node:net');
  const pool = await started();
  t.after(() => pool.close());
  pool.send(T.CONFIG, {max_inflight: 1});
  const where = path.join(pool.dir, 'listen.sock');
  const token = 'ab'.repeat(16);
  pool.send(T.PEER_ADDED, {role: 'server', group: 'front', index: 0, pid: 9, listen: where, token});
  const connect = async () => {
    for (;;) {
      try {
        const socket = net.createConnection({path: where});
        await new Promise((resolve, reject) => {
          socket.once('connect', resolve);
          socket.once('error', reject);
        });
        return socket;
      } catch (e) {
        await new Promise((r) => setTimeout(r, 10));
      }
    }
  };
  // A wrong token: closed, nothing served.
  const intruder = await connect();
  const intruderReader = new (require('./fake_pool.js').FrameReader)(intruder);
  intruder.write('cd'.repeat(16) + 'x'.repeat(24));
  assert.equal(await intruderReader.read(), null);
  // The token, with the first request in the same write.
  const link = await connect();
  const reader = new (require('./fake_pool.js').FrameReader)(link);
  link.write(Buffer.concat([Buffer.from(token), frame(T.REQUEST, 'tok', 1)]));
  const f = await reader.read();
  assert.deepEqual([f.type, f.body.toString()], [T.REPLY, 'TOK']);
  // One link per path: the listener is closed (and its path removed).
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(fs.existsSync(where), false);
});

test('a sender: retries until its peer listens, writes the token first; an unreachable link gives its requests back', async (t) => {
  const net = require('node:net');
  const requests = [{group: 'echo', body: 'a'}, {group: 'echo', body: 'b'}];
  const pool = await started(SEND, {args: [JSON.stringify(requests)]});
  t.after(() => pool.close());
  pool.send(T.CONFIG, {max_inflight: 1});
  await pool.reader.readType(T.ROUTE_OPEN);
  const late = path.join(pool.dir, 'late.sock');
  const token = '0123456789abcdef'.repeat(2);
  // One link whose path never appears (no token: no retry), one whose
  // listener comes 200 ms later.
  pool.send(T.PEER_ADDED, {role: 'sender', group: 'echo', index: 0, pid: 10,
                           path: path.join(pool.dir, 'missing.sock')});
  pool.send(T.PEER_ADDED, {role: 'sender', group: 'echo', index: 1, pid: 11, path: late, token});
  pool.send(T.ROUTE_OPENED, {group: 'echo', max_inflight: 4, queue_limit: 10,
                             request_timeout_ms: 30000});
  await new Promise((r) => setTimeout(r, 200));
  const server = net.createServer();
  const accepted = new Promise((resolve) => server.once('connection', resolve));
  await new Promise((resolve) => server.listen(late, resolve));
  const socket = await accepted;
  server.close();
  // The token comes first, then both requests (the one dispatched to the
  // missing path came back to the queue); each is answered.
  let head = Buffer.alloc(0);
  const decoder = new wp.FrameDecoder();
  socket.on('data', (data) => {
    if (head !== null) {
      head = Buffer.concat([head, data]);
      if (head.length < 32) return;
      assert.equal(head.subarray(0, 32).toString(), token);
      data = head.subarray(32);
      head = null;
    }
    decoder.feed(data);
    for (let f = decoder.next(); f !== null; f = decoder.next()) {
      socket.write(frame(T.REPLY, f.body.toString().toUpperCase(), f.id));
    }
  });
  assert.deepEqual(await pool.waitExit(), {code: 0, signal: null}, pool.output);
  const replies = pool.output.trim().split('\n').filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l)).sort((x, y) => x.n - y.n);
  assert.deepEqual(replies.map((r) => [r.ok, r.text]), [[true, 'A'], [true, 'B']]);
  assert.match(pool.output, /cannot connect to \S+missing.sock/);
});
