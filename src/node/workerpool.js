'use strict';
// workerpool for Node.js: take part in a workerpool pool as a child process.
//
// Standard library only, no native addon (Node.js 18+). Implements the wire
// protocol of docs/PROTOCOL.md: the serving side (a job, or a service that
// serves reactors) and the sending side (a reactor or service sending
// requests to the groups in its routes_to). Node's `net` cannot receive
// descriptors passed with SCM_RIGHTS, so this library says
// `"links": "connect"` in its hello and gets every link as a Unix socket
// path to connect to (docs/PROTOCOL.md, "Links by connect"); the bytes of a
// link still flow directly between the two children.
//
// A job:
//
//   const workerpool = require('workerpool-child');   // src/node
//   workerpool.serve(async (body, meta, request) => body.toString().toUpperCase());
//
// The handler gets the body (a Buffer), the meta (an object, or null) and
// the request (progress, cancel, client). It returns (or resolves to) a
// string, a Buffer, or {body, meta}; a throw (or rejection) answers an error
// (code 1, the error's message). A cancelled request's `request.signal`
// aborts; its handler should stop and throw (answered with code 7).
//
// Sending (from a reactor or service, or from inside a handler with
// request.client.send):
//
//   const client = new workerpool.Client();
//   const reply = await client.send('compute', 'payload', {timeout: 30000});
//   if (reply.ok) ... reply.body ... else ... reply.code, reply.text ...
//
// send() never rejects for pool errors: a refused route, a full queue, a
// group with no live process, ... come back as a Reply with a code.
//
// Everything runs on Node's event loop; a handler that blocks it (a long
// synchronous computation) also stops heartbeats and the reading of
// cancels: use worker_threads for such work.

const net = require('node:net');

// --- the wire format (include/workerpool/wire.h) ---------------------------

const WIRE_VERSION = 1;
const HEADER_SIZE = 24;
const MAX_PAYLOAD = 16 * 1024 * 1024;
const PROGRESS_SCALE = 1000000;

// Same limits as the C++ and Python libraries.
const CANCEL_GRACE_MS = 5000;  // a server ignoring a cancel this long is killed
const POOL_GONE_EXIT_MS = 2000;
const STATS_INTERVAL_MS = 1000;
const MAX_ERROR_TEXT = 64 * 1024;
const MAX_PROGRESS_TEXT = 4096;
// Links by connect between two children that both connect: how long the
// sender retries while the server is not listening yet, and how long the
// server listens (and waits for a connection's token).
const LINK_CONNECT_MS = 5000;

const FrameType = Object.freeze({
  REQUEST: 1, REPLY: 2, ERROR: 3, PROGRESS: 4, CANCEL: 5,
  HELLO: 16, ROUTE_OPEN: 17, ROUTE_REFUSED: 18, PEER_ADDED: 19, PEER_GONE: 20,
  PEER_DRAINING: 21, KILL_PEER: 22, HEARTBEAT: 23, STATS: 24, DRAIN: 25,
  CONFIG: 26, ROUTE_OPENED: 27,
});
const KNOWN_TYPES = new Set(Object.values(FrameType));

const ErrorCode = Object.freeze({
  HANDLER_ERROR: 1, WORKER_DIED: 2, TIMEOUT: 3, QUEUE_FULL: 4, NO_WORKERS: 5,
  REFUSED: 6, CANCELLED: 7, TOO_LARGE: 8, PROTOCOL: 9, SHUTTING_DOWN: 10,
});

class ProtocolError extends Error {}

function asBuffer(value) {
  if (value === undefined || value === null) return Buffer.alloc(0);
  if (Buffer.isBuffer(value)) return value;
  if (value instanceof Uint8Array) return Buffer.from(value);
  if (typeof value === 'string') return Buffer.from(value, 'utf8');
  return Buffer.from(String(value), 'utf8');
}

function metaBuffer(meta) {
  if (meta === undefined || meta === null) return Buffer.alloc(0);
  if (Buffer.isBuffer(meta) || typeof meta === 'string') return asBuffer(meta);
  return Buffer.from(JSON.stringify(meta), 'utf8');
}

// One frame: the 24-byte header, then meta, then body.
function encodeFrame(type, id = 0, aux = 0, meta = null, body = null) {
  const m = asBuffer(meta);
  const b = asBuffer(body);
  const header = Buffer.alloc(HEADER_SIZE);
  header.writeUInt32LE(m.length + b.length, 0);
  header.writeUInt8(WIRE_VERSION, 4);
  header.writeUInt8(type, 5);
  header.writeUInt16LE(0, 6);
  header.writeBigUInt64LE(BigInt(id), 8);
  header.writeUInt32LE(aux >>> 0, 16);
  header.writeUInt32LE(m.length, 20);
  return Buffer.concat([header, m, b]);
}

// Decodes frames from bytes that arrive in any split.
class FrameDecoder {
  constructor() {
    this.chunks = [];
    this.size = 0;
  }

  feed(data) {
    this.chunks.push(data);
    this.size += data.length;
  }

  // The next whole frame, or null; throws ProtocolError on garbage.
  next() {
    if (this.size < HEADER_SIZE) return null;
    if (this.chunks.length > 1) this.chunks = [Buffer.concat(this.chunks)];
    const buffer = this.chunks[0];
    const length = buffer.readUInt32LE(0);
    const version = buffer.readUInt8(4);
    const type = buffer.readUInt8(5);
    const metaLength = buffer.readUInt32LE(20);
    if (version !== WIRE_VERSION) {
      throw new ProtocolError(`wire version ${version}, expected 1`);
    }
    if (length > MAX_PAYLOAD) {
      throw new ProtocolError(`frame of ${length} bytes is over the limit`);
    }
    if (metaLength > length) {
      throw new ProtocolError(`meta_length ${metaLength} over payload ${length}`);
    }
    if (!KNOWN_TYPES.has(type)) {
      throw new ProtocolError(`unknown frame type ${type}`);
    }
    if (this.size < HEADER_SIZE + length) return null;
    const id = Number(buffer.readBigUInt64LE(8));
    const aux = buffer.readUInt32LE(16);
    const end = HEADER_SIZE + length;
    const meta = buffer.subarray(HEADER_SIZE, HEADER_SIZE + metaLength);
    const body = buffer.subarray(HEADER_SIZE + metaLength, end);
    const rest = buffer.subarray(end);
    this.chunks = rest.length ? [rest] : [];
    this.size = rest.length;
    return {type, id, aux, meta, body};
  }
}

function jsonObject(data) {
  try {
    const value = JSON.parse(asBuffer(data).toString('utf8') || '{}');
    return value !== null && typeof value === 'object' && !Array.isArray(value) ?
        value : {};
  } catch (e) {
    return {};
  }
}

function integer(value, fallback) {
  return Number.isSafeInteger(value) ? value : fallback;
}

function signed32(value) {
  return value | 0;
}

// Ends SOCKET (what was written still leaves) and resolves once it is
// flushed; a peer that never closes its side does not keep it open.
function endSocket(socket) {
  return new Promise((resolve) => {
    if (socket.destroyed) {
      resolve();
      return;
    }
    socket.end(() => resolve());
    socket.once('close', () => resolve());
    setTimeout(() => socket.destroy(), 1000).unref();
  });
}

function log(message) {
  process.stderr.write(`workerpool: ${message}\n`);
}

// --- what a sender gets back -----------------------------------------------

class Reply {
  constructor(ok, code, body, meta) {
    this.ok = ok;
    this.code = ok ? 0 : code;
    this.body = asBuffer(body);
    this.metaBytes = asBuffer(meta);
  }

  // The body as UTF-8 text (an error's message).
  get text() {
    return this.body.toString('utf8');
  }

  // The reply's meta as an object ({} when there is none).
  get meta() {
    return jsonObject(this.metaBytes);
  }
}

// --- what a handler gets ----------------------------------------------------

class Request {
  constructor(client, link, id, priority, meta, body) {
    this.client = client;
    this.id = id;
    this.priority = priority;
    this.body = body;
    this.metaBytes = meta;
    this.meta = meta.length ? jsonObject(meta) : null;
    this.link = link;
    this.started = false;
    this.answered = false;
    this.sequence = 0;
    this.controller = new AbortController();
  }

  // Aborts when the sender cancels the request.
  get signal() {
    return this.controller.signal;
  }

  get cancelled() {
    return this.controller.signal.aborted;
  }

  // Tells the sender how far along it is: FRACTION from 0 to 1, a short text.
  progress(fraction, text = '') {
    this.client._sendProgress(this, fraction, text);
  }
}

// --- the connection to the pool ---------------------------------------------

class Link {
  constructor(client, socket, role, info) {
    this.client = client;
    this.socket = socket;  // null until connected
    this.pending = [];     // frames written before that
    this.role = role;  // 'server': we serve on it; 'sender': we send on it
    this.group = typeof info.group === 'string' ? info.group : '';
    this.index = integer(info.index, -1);
    this.pid = integer(info.pid, -1);
    this.decoder = new FrameDecoder();
    this.inflight = new Map();  // sender: id -> Out
    this.serving = new Map();   // server: id -> Request
    this.route = null;
    this.draining = false;
    this.condemned = false;
    this.closed = false;
  }

  describe() {
    return `${this.group}[${this.index}] pid ${this.pid}`;
  }

  write(bytes) {
    if (this.closed) return;
    if (this.socket) {
      this.socket.write(bytes);
    } else {
      this.pending.push(bytes);
    }
  }
}

class Route {
  constructor(group) {
    this.group = group;
    this.state = 'pending';  // 'open', 'refused'
    this.refusal = '';
    this.peers = [];
    this.queue = [];  // Out, sorted by priority then id
    this.maxInflight = 1;
    this.queueLimit = 1000;
    this.requestTimeoutMs = 30000;
  }
}

class Client {
  // Connects this process to its pool: the pool channel at FD (default
  // WORKERPOOL_IPC_FD) and a hello that asks for links by connect.
  // HANDLE_SIGTERM (default true): SIGTERM is a drain.
  constructor({fd, handleSigterm = true} = {}) {
    if (fd === undefined) {
      const text = process.env.WORKERPOOL_IPC_FD || '';
      if (!text) {
        throw new Error('WORKERPOOL_IPC_FD is not set; this program is a ' +
                        'workerpool child and must be started by `workerpool run`');
      }
      fd = Number(text);
      if (!Number.isSafeInteger(fd) || fd < 0 || String(fd) !== text.trim()) {
        throw new Error(`WORKERPOOL_IPC_FD is not a file descriptor number: ${text}`);
      }
    }
    this.group = process.env.WORKERPOOL_GROUP || '';
    this.index = integer(Number(process.env.WORKERPOOL_INDEX), -1);
    this.stats = {sent: 0, replied: 0, failed: 0, refused: 0, cancelled: 0,
                  timed_out: 0, served: 0, served_errors: 0};
    this.exitCode = 0;
    this.stopping = false;
    this.ready = false;
    this._handler = null;
    this._serveLimit = 1;
    this._maxRequests = 0;
    this._running = 0;
    this._serveQueue = [];
    this._sequence = 0;
    this._links = new Set();
    this._routes = new Map();
    this._requests = new Map();
    this._nextId = 1;
    this._readyWaiters = [];
    this._stopCallbacks = [];
    this._finishCallbacks = [];
    this._heartbeat = null;
    this._statsTimer = null;
    this._finished = false;
    this._decoder = new FrameDecoder();
    this._poolOpen = true;
    try {
      this._pool = new net.Socket({fd, readable: true, writable: true});
    } catch (e) {
      throw new Error(`cannot use pool channel fd ${fd}: ${e.message}`);
    }
    this._pool.on('data', (data) => this._readPool(data));
    this._pool.on('end', () => this._poolGone('the pool closed its channel'));
    this._pool.on('error', (e) => this._poolGone(e.message));
    this._pool.on('close', () => this._poolGone('the pool channel closed'));
    if (handleSigterm) {
      this._onSigterm = () => this.stop();
      process.on('SIGTERM', this._onSigterm);
    }
    this._sendPool(FrameType.HELLO,
                   {pid: process.pid, protocol: WIRE_VERSION, links: 'connect'});
  }

  // -- public ----------------------------------------------------------------

  // Serves requests with HANDLER(body, meta, request) until the pool drains
  // this process, SIGTERM, or the pool is gone. Resolves to the exit code
  // once everything in flight was answered (serve() below then exits).
  serve(handler) {
    if (typeof handler !== 'function') throw new TypeError('handler must be a function');
    this._handler = handler;
    this._serveNext();
    return new Promise((resolve) => this.onFinish(() => resolve(this.exitCode)));
  }

  // Resolves once the pool sent this process its configuration.
  whenReady() {
    if (this.ready) return Promise.resolve();
    return new Promise((resolve) => this._readyWaiters.push(resolve));
  }

  // CALLBACK() runs when the pool asks this process to stop taking work
  // (drain, SIGTERM) or the pool is gone.
  onStop(callback) {
    this._stopCallbacks.push(callback);
  }

  // CALLBACK() runs once everything finished and the pool channel closed.
  onFinish(callback) {
    if (this._finished) {
      callback();
    } else {
      this._finishCallbacks.push(callback);
    }
  }

  // Stop taking work, finish what is in flight, then close.
  stop() {
    this._beginStop();
  }

  // Sends BODY to a process of GROUP. Resolves to a Reply, never rejects.
  // Options: meta (object, string or Buffer), priority (lower first),
  // timeout (ms; bounds this call, then cancels), signal (an AbortSignal that
  // cancels), onProgress(fraction, text).
  send(group, body, {meta, priority = 0, timeout, signal, onProgress} = {}) {
    return new Promise((resolve) => {
      const out = {
        id: this._nextId++, group: String(group), body: asBuffer(body),
        meta: metaBuffer(meta), priority: signed32(priority), done: resolve,
        onProgress, link: null, route: null, queued: false, cancelled: false,
        finished: false, deadline: null, timer: null, callTimer: null,
      };
      if (signal) {
        if (signal.aborted) {
          queueMicrotask(() => this._cancel(out.id));
        } else {
          signal.addEventListener('abort', () => this._cancel(out.id), {once: true});
        }
      }
      if (timeout !== undefined && timeout !== null) {
        out.callTimer = setTimeout(() => this._cancel(out.id), Math.max(0, timeout));
      }
      this._submit(out);
    });
  }

  // -- the pool channel ------------------------------------------------------

  _sendPool(type, body) {
    if (this._poolOpen) this._pool.write(encodeFrame(type, 0, 0, null, JSON.stringify(body)));
  }

  _readPool(data) {
    this._decoder.feed(data);
    try {
      for (;;) {
        if (!this._poolOpen) return;
        const frame = this._decoder.next();
        if (frame === null) return;
        this._onPoolFrame(frame);
      }
    } catch (e) {
      if (!(e instanceof ProtocolError)) throw e;
      log(`bad frame from the pool: ${e.message}`);
      this._poolGone('protocol error');
    }
  }

  _onPoolFrame(frame) {
    const body = jsonObject(frame.body);
    switch (frame.type) {
      case FrameType.CONFIG: {
        this._serveLimit = Math.max(1, integer(body.max_inflight, 1));
        this._maxRequests = Math.max(0, integer(body.max_requests, 0));
        const heartbeatMs = integer(body.heartbeat_ms, 0);
        if (this._heartbeat) clearInterval(this._heartbeat);
        this._heartbeat = null;
        if (heartbeatMs > 0) {
          this._heartbeat = setInterval(() => this._sendPool(FrameType.HEARTBEAT, {}),
                                        Math.max(1, Math.floor(heartbeatMs / 3)));
        }
        if (!this.ready) {
          this.ready = true;
          for (const resolve of this._readyWaiters.splice(0)) resolve();
        }
        this._serveNext();
        break;
      }
      case FrameType.PEER_ADDED:
        this._adoptLink(body);
        break;
      case FrameType.ROUTE_OPENED:
      case FrameType.ROUTE_REFUSED: {
        const route = this._routes.get(typeof body.group === 'string' ? body.group : '');
        if (!route) return;
        if (frame.type === FrameType.ROUTE_REFUSED) {
          route.state = 'refused';
          route.refusal = typeof body.error === 'string' ? body.error : 'refused';
          this._failRoute(route, ErrorCode.REFUSED, route.refusal);
          return;
        }
        route.state = 'open';
        route.maxInflight = Math.max(1, integer(body.max_inflight, 1));
        route.queueLimit = Math.max(0, integer(body.queue_limit, 1000));
        route.requestTimeoutMs = Math.max(0, integer(body.request_timeout_ms, 30000));
        this._dispatch(route);
        break;
      }
      case FrameType.PEER_GONE:
      case FrameType.PEER_DRAINING: {
        const pid = integer(body.pid, 0);
        const how = typeof body.how === 'string' ? body.how : 'exited';
        for (const link of [...this._links].filter((l) => l.pid === pid)) {
          if (frame.type === FrameType.PEER_DRAINING) {
            link.draining = true;
            if (link.role === 'sender' && link.inflight.size === 0) this._closeLink(link);
            continue;
          }
          this._failLinkRequests(link, ErrorCode.WORKER_DIED,
                                 `worker died: ${link.describe()} ${how}`);
          this._closeLink(link);
        }
        break;
      }
      case FrameType.DRAIN:
        this._beginStop();
        break;
      default:
        break;  // anything else is ignored (forward compatible)
    }
  }

  _poolGone(why) {
    if (!this._poolOpen) return;
    this._poolOpen = false;
    if (!this._finished) log(`${why}; exiting`);
    this._pool.destroy();
    for (const route of this._routes.values()) {
      this._failRoute(route, ErrorCode.SHUTTING_DOWN, 'the pool is gone');
    }
    // Do not linger when the application keeps the loop busy.
    setTimeout(() => process.exit(0), POOL_GONE_EXIT_MS).unref();
    this._beginStop();
  }

  _count(key) {
    this.stats[key] += 1;
    const answered = this.stats.served + this.stats.served_errors;
    if (this._maxRequests > 0 && (key === 'served' || key === 'served_errors') &&
        answered >= this._maxRequests) {
      // Recycling is decided by the Watcher from the stats: send them now.
      this._sendStats();
      return;
    }
    if (this._statsTimer === null && this._poolOpen) {
      this._statsTimer = setTimeout(() => this._sendStats(), STATS_INTERVAL_MS);
      this._statsTimer.unref();
    }
  }

  _sendStats() {
    if (this._statsTimer !== null) clearTimeout(this._statsTimer);
    this._statsTimer = null;
    let queued = 0;
    let inflight = 0;
    for (const out of this._requests.values()) {
      if (out.link) inflight += 1; else if (!out.cancelled) queued += 1;
    }
    this._sendPool(FrameType.STATS, {...this.stats, queued, inflight,
                                     serving: this._running});
  }

  // -- links -----------------------------------------------------------------

  _adoptLink(info) {
    const role = info.role === 'server' ? 'server' : 'sender';
    const token = typeof info.token === 'string' && /^[0-9a-f]{32}$/.test(info.token) ?
        info.token : null;
    if (role === 'server' && typeof info.listen === 'string' && info.listen !== '' && token) {
      this._listenForLink(info, token);
      return;
    }
    if (typeof info.path !== 'string' || info.path === '') {
      // A link by fd: this library asked for links by connect.
      log('peer announced without a path to connect to; ignored');
      return;
    }
    const link = new Link(this, null, role, info);
    this._links.add(link);
    this._connectLink(link, info.path, token, Date.now() + LINK_CONNECT_MS);
    if (role === 'sender') {
      // Requests written before the connection is made wait in the link.
      link.route = this._routeTo(link.group);
      link.route.peers.push(link);
      this._dispatch(link.route);
    }
  }

  // Connects LINK to PATH. A path the Watcher listens on is there already;
  // one a peer child listens on (TOKEN set) may not be yet: retried.
  _connectLink(link, path, token, deadline) {
    if (link.closed) return;
    const socket = net.createConnection({path});
    const onError = (e) => {
      socket.destroy();
      if (token && (e.code === 'ENOENT' || e.code === 'ECONNREFUSED') &&
          Date.now() < deadline) {
        setTimeout(() => this._connectLink(link, path, token, deadline), 10);
        return;
      }
      this._linkUnreachable(link, `cannot connect to ${path}: ${e.message}`);
    };
    socket.once('error', onError);
    socket.once('connect', () => {
      socket.removeListener('error', onError);
      if (link.closed) {
        socket.destroy();
        return;
      }
      this._useSocket(link, socket);
      if (token) socket.write(token);
      for (const bytes of link.pending.splice(0)) socket.write(bytes);
    });
  }

  // A link that never connected: what was dispatched to it never left, so
  // it goes back to its route's queue for the other links.
  _linkUnreachable(link, why) {
    if (link.closed) return;
    log(`link to ${link.describe()}: ${why}`);
    const route = link.route;
    for (const out of [...link.inflight.values()]) {
      if (out.timer) clearTimeout(out.timer);
      out.timer = null;
      out.link = null;
      if (out.cancelled || !route) {
        this._complete(out, new Reply(false, ErrorCode.CANCELLED, 'cancelled'));
      } else {
        out.queued = true;
        const queue = route.queue;
        let at = 0;
        while (at < queue.length && queue[at].priority <= out.priority) at += 1;
        queue.splice(at, 0, out);
      }
    }
    link.inflight.clear();
    link.pending = [];
    this._closeLink(link);
  }

  _useSocket(link, socket) {
    link.socket = socket;
    socket.on('data', (data) => this._readLink(link, data));
    socket.on('end', () => this._linkEof(link, 'closed'));
    socket.on('error', (e) => this._linkEof(link, e.message));
    socket.on('close', () => this._linkEof(link, 'closed'));
  }

  // Both this child and its sender take links by connect: this side
  // listens on the path it was given, and the first connection that starts
  // with the token is the link (the Watcher gave the token to the sender
  // only). Others are closed; the listener closes after the link is made
  // or LINK_CONNECT_MS.
  _listenForLink(info, token) {
    const server = net.createServer();
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      server.close();
    };
    const timer = setTimeout(() => {
      if (!done) log(`no sender connected to ${info.listen} in time`);
      finish();
    }, LINK_CONNECT_MS);
    timer.unref();
    server.on('error', (e) => {
      log(`cannot listen for a link on ${info.listen}: ${e.message}`);
      finish();
    });
    server.on('connection', (socket) => {
      let got = Buffer.alloc(0);
      const giveUp = setTimeout(() => socket.destroy(), LINK_CONNECT_MS);
      giveUp.unref();
      socket.on('error', () => socket.destroy());
      const onData = (data) => {
        got = Buffer.concat([got, data]);
        if (got.length < token.length) return;
        socket.removeListener('data', onData);
        clearTimeout(giveUp);
        if (done || got.subarray(0, token.length).toString('latin1') !== token) {
          socket.destroy();
          return;
        }
        finish();
        const link = new Link(this, null, 'server', info);
        this._links.add(link);
        this._useSocket(link, socket);
        const rest = got.subarray(token.length);
        if (rest.length) this._readLink(link, rest);
      };
      socket.on('data', onData);
    });
    server.listen(info.listen);
  }

  _readLink(link, data) {
    link.decoder.feed(data);
    try {
      for (;;) {
        if (link.closed) return;
        const frame = link.decoder.next();
        if (frame === null) return;
        this._onLinkFrame(link, frame);
      }
    } catch (e) {
      if (!(e instanceof ProtocolError)) throw e;
      log(`bad frame from ${link.describe()}: ${e.message}`);
      this._failLinkRequests(link, ErrorCode.PROTOCOL,
                             `protocol error from ${link.describe()}`);
      this._closeLink(link);
    }
  }

  _onLinkFrame(link, frame) {
    if (link.role === 'server') {
      if (frame.type === FrameType.REQUEST) {
        this._onRequest(link, frame);
      } else if (frame.type === FrameType.CANCEL) {
        this._onCancelFrame(link, frame.id);
      }
      return;
    }
    if (frame.type === FrameType.REQUEST) {
      // The peer only serves us; a request from it breaks the rules.
      this._count('refused');
      link.write(encodeFrame(FrameType.ERROR, frame.id, ErrorCode.REFUSED, null,
                             `refused: ${link.group} may not send requests to ${this.group}`));
      return;
    }
    const out = link.inflight.get(frame.id);
    if (!out) return;  // a late answer to a timeout or a cancel
    if (frame.type === FrameType.PROGRESS) {
      if (out.onProgress && !out.cancelled) {
        try {
          out.onProgress(frame.aux / PROGRESS_SCALE, frame.body.toString('utf8'));
        } catch (e) {
          log(`error in a progress callback: ${e.message}`);
        }
      }
      return;
    }
    if (frame.type !== FrameType.REPLY && frame.type !== FrameType.ERROR) return;
    link.inflight.delete(frame.id);
    out.link = null;
    const reply = frame.type === FrameType.REPLY ?
        new Reply(true, 0, Buffer.from(frame.body), Buffer.from(frame.meta)) :
        new Reply(false, frame.aux, Buffer.from(frame.body), Buffer.from(frame.meta));
    const route = out.route;
    this._complete(out, reply);
    if (link.draining && link.inflight.size === 0) this._closeLink(link);
    this._dispatch(route);
  }

  _linkEof(link, why) {
    if (link.closed) return;
    if (link.role === 'sender' && link.inflight.size > 0 && this._poolOpen) {
      // The peer died; the pool's peer_gone says how: keep the requests
      // until then.
      link.draining = true;
      if (link.route) link.route.peers = link.route.peers.filter((p) => p !== link);
      return;
    }
    if (link.role === 'sender' && link.inflight.size > 0) {
      this._failLinkRequests(link, ErrorCode.WORKER_DIED,
                             `worker died: ${link.describe()} (${why})`);
    }
    this._closeLink(link);
  }

  _failLinkRequests(link, code, text) {
    for (const out of [...link.inflight.values()]) {
      out.link = null;
      this._complete(out, new Reply(false, code, text));
    }
    link.inflight.clear();
    for (const request of link.serving.values()) request.link = null;
  }

  _closeLink(link) {
    if (link.closed) return;
    this._failLinkRequests(link, ErrorCode.WORKER_DIED, `worker died: ${link.describe()}`);
    link.serving.clear();
    link.closed = true;
    if (link.socket) endSocket(link.socket);
    this._links.delete(link);
    const route = link.route;
    if (route) {
      link.route = null;
      route.peers = route.peers.filter((p) => p !== link);
      this._dispatch(route);
    }
    this._maybeFinishStop();
  }

  // -- serving ---------------------------------------------------------------

  _onRequest(link, frame) {
    if (!this._handler) {
      link.write(encodeFrame(FrameType.ERROR, frame.id, ErrorCode.REFUSED, null,
                             `group ${this.group} does not serve requests`));
      return;
    }
    const request = new Request(this, link, frame.id, signed32(frame.aux),
                                Buffer.from(frame.meta), Buffer.from(frame.body));
    link.serving.set(frame.id, request);
    request.sequence = ++this._sequence;
    if (this._running < this._serveLimit && this._serveQueue.length === 0 && this.ready) {
      this._start(request);
      return;
    }
    // Lowest priority first, first come within one priority.
    const queue = this._serveQueue;
    let at = queue.length;
    while (at > 0 && (queue[at - 1].priority > request.priority)) at -= 1;
    queue.splice(at, 0, request);
  }

  _onCancelFrame(link, id) {
    const request = link.serving.get(id);
    if (!request) return;
    if (!request.started) {
      request.answered = true;
      link.serving.delete(id);
      link.write(encodeFrame(FrameType.ERROR, id, ErrorCode.CANCELLED, null,
                             'cancelled before it started'));
      return;
    }
    request.controller.abort();
  }

  _serveNext() {
    if (!this.ready || !this._handler) return;
    while (this._running < this._serveLimit && this._serveQueue.length) {
      const request = this._serveQueue.shift();
      if (request.answered || !request.link) continue;
      this._start(request);
    }
  }

  _start(request) {
    request.started = true;
    this._running += 1;
    let result;
    try {
      result = Promise.resolve(this._handler(request.body, request.meta, request));
    } catch (e) {
      result = Promise.reject(e);
    }
    result.then((value) => this._answer(request, true, value),
                (error) => this._answer(request, false, error));
  }

  _answer(request, ok, value) {
    this._running -= 1;
    if (!request.answered) {
      request.answered = true;
      const link = request.link;
      let frame;
      if (ok) {
        let body = value;
        let meta = null;
        if (value !== null && typeof value === 'object' && !Buffer.isBuffer(value) &&
            !(value instanceof Uint8Array)) {
          body = value.body;
          meta = metaBuffer(value.meta);
        }
        body = asBuffer(body);
        meta = asBuffer(meta);
        if (body.length + meta.length > MAX_PAYLOAD) {
          ok = false;
          frame = encodeFrame(FrameType.ERROR, request.id, ErrorCode.TOO_LARGE, null,
                              `reply of ${body.length} bytes is over the frame limit`);
        } else {
          frame = encodeFrame(FrameType.REPLY, request.id, 0, meta, body);
        }
      } else {
        const text = request.cancelled ? 'cancelled' :
            String((value && value.message) || value || 'handler error');
        const code = request.cancelled ? ErrorCode.CANCELLED : ErrorCode.HANDLER_ERROR;
        frame = encodeFrame(FrameType.ERROR, request.id, code, null,
                            asBuffer(text).subarray(0, MAX_ERROR_TEXT));
      }
      if (link && !link.closed) {
        link.write(frame);
        link.serving.delete(request.id);
      }
      this._count(ok ? 'served' : 'served_errors');
    }
    this._serveNext();
    this._maybeFinishStop();
  }

  _sendProgress(request, fraction, text) {
    const link = request.link;
    if (request.answered || !link || link.closed) return;
    let f = Number(fraction);
    if (!(f >= 0)) f = 0;  // also NaN
    f = Math.min(f, 1);
    link.write(encodeFrame(FrameType.PROGRESS, request.id, Math.floor(f * PROGRESS_SCALE),
                           null, asBuffer(text).subarray(0, MAX_PROGRESS_TEXT)));
  }

  // -- sending ---------------------------------------------------------------

  _routeTo(group) {
    let route = this._routes.get(group);
    if (!route) {
      route = new Route(group);
      this._routes.set(group, route);
      this._sendPool(FrameType.ROUTE_OPEN, {group});
    }
    return route;
  }

  _completeNow(out, code, text) {
    this._complete(out, new Reply(false, code, text));
  }

  _submit(out) {
    this._requests.set(out.id, out);
    this._count('sent');
    if (out.meta.length + out.body.length > MAX_PAYLOAD) {
      return this._completeNow(out, ErrorCode.TOO_LARGE,
                               `request of ${out.body.length} bytes is over the frame limit of ${MAX_PAYLOAD}`);
    }
    if (this.stopping || !this._poolOpen) {
      return this._completeNow(out, ErrorCode.SHUTTING_DOWN, 'this process is stopping');
    }
    const route = this._routeTo(out.group);
    out.route = route;
    if (route.state === 'refused') {
      return this._completeNow(out, ErrorCode.REFUSED, route.refusal);
    }
    if (route.state === 'open' && route.queue.length >= route.queueLimit &&
        !route.peers.some((p) => this._hasRoom(route, p))) {
      return this._completeNow(out, ErrorCode.QUEUE_FULL,
                               `queue of group ${out.group} is full (${route.queueLimit})`);
    }
    out.queued = true;
    const queue = route.queue;
    let at = queue.length;
    while (at > 0 && queue[at - 1].priority > out.priority) at -= 1;
    queue.splice(at, 0, out);
    this._dispatch(route);
  }

  _hasRoom(route, peer) {
    return !peer.draining && !peer.condemned && !peer.closed &&
        peer.inflight.size < route.maxInflight;
  }

  _dispatch(route) {
    if (!route || route.state !== 'open') return;
    while (route.queue.length) {
      let best = null;
      for (const peer of route.peers) {
        if (!this._hasRoom(route, peer)) continue;
        if (best === null || peer.inflight.size < best.inflight.size) best = peer;
      }
      if (best === null) break;
      const out = route.queue.shift();
      if (!out.queued) continue;
      out.queued = false;
      out.link = best;
      best.inflight.set(out.id, out);
      best.write(encodeFrame(FrameType.REQUEST, out.id, out.priority, out.meta, out.body));
      // The body is kept until the answer: a link that never connects
      // gives its requests back to the queue (_linkUnreachable).
      if (route.requestTimeoutMs > 0) this._armDeadline(out, route.requestTimeoutMs);
    }
    if (route.queue.length &&
        !route.peers.some((p) => !p.draining && !p.condemned && !p.closed)) {
      this._failRoute(route, ErrorCode.NO_WORKERS, `group ${route.group} has no live process`);
    }
  }

  _armDeadline(out, ms) {
    if (out.timer) clearTimeout(out.timer);
    out.timer = setTimeout(() => this._onDeadline(out), ms);
  }

  _failRoute(route, code, text) {
    const failed = route.queue.filter((out) => out.queued);
    route.queue = [];
    for (const out of failed) {
      out.queued = false;
      this._completeNow(out, code, text);
    }
  }

  _complete(out, reply) {
    if (out.finished) return;
    out.finished = true;
    this._requests.delete(out.id);
    if (out.timer) clearTimeout(out.timer);
    if (out.callTimer) clearTimeout(out.callTimer);
    if (out.link) {
      out.link.inflight.delete(out.id);
      out.link = null;
    }
    if (out.cancelled) {
      this._maybeFinishStop();
      return;  // already answered CANCELLED
    }
    if (reply.ok) this._count('replied');
    else if (reply.code === ErrorCode.REFUSED) this._count('refused');
    else if (reply.code === ErrorCode.TIMEOUT) this._count('timed_out');
    else if (reply.code === ErrorCode.CANCELLED) this._count('cancelled');
    else this._count('failed');
    out.done(reply);
    this._maybeFinishStop();
  }

  _cancel(id) {
    const out = this._requests.get(id);
    if (!out || out.cancelled || out.finished) return;
    if (!out.link) {
      if (out.queued && out.route) {
        out.queued = false;
        out.route.queue = out.route.queue.filter((o) => o !== out);
      }
      this._completeNow(out, ErrorCode.CANCELLED, 'cancelled while queued');
      return;
    }
    // Running: tell the server, answer now, and give it a grace period to
    // answer before it is killed.
    out.link.write(encodeFrame(FrameType.CANCEL, out.id));
    this._count('cancelled');
    out.cancelled = true;
    if (out.callTimer) clearTimeout(out.callTimer);
    this._armDeadline(out, CANCEL_GRACE_MS);
    out.done(new Reply(false, ErrorCode.CANCELLED, 'cancelled'));
  }

  _onDeadline(out) {
    out.timer = null;
    const link = out.link;
    if (out.finished || !link) return;
    const reason = out.cancelled ? `ignored a cancel for ${CANCEL_GRACE_MS / 1000}s` :
        `request timed out after ${out.route.requestTimeoutMs}ms`;
    link.condemned = true;
    this._sendPool(FrameType.KILL_PEER, {pid: link.pid, reason});
    this._complete(out, new Reply(false, ErrorCode.TIMEOUT,
                                  `timeout: ${reason}; ${link.describe()} killed`));
    if (link.route) this._dispatch(link.route);
  }

  // -- stopping --------------------------------------------------------------

  _beginStop() {
    if (this.stopping) return;
    this.stopping = true;
    for (const callback of this._stopCallbacks) {
      try {
        callback();
      } catch (e) {
        log(`error in a stop callback: ${e.message}`);
      }
    }
    this._maybeFinishStop();
  }

  _maybeFinishStop() {
    if (!this.stopping || this._finished) return;
    if (this._requests.size > 0 || this._running > 0) return;
    // Senders still linked to us may have requests on the way.
    if (this._poolOpen && [...this._links].some((l) => l.role === 'server')) return;
    this._finished = true;
    if (this._heartbeat) clearInterval(this._heartbeat);
    if (this._statsTimer) this._sendStats();
    if (this._onSigterm) process.removeListener('SIGTERM', this._onSigterm);
    // Last words (answers, stats) leave before the finish callbacks run
    // (serve() exits from one): each socket is ended and waited for, at
    // most a second.
    const ended = [];
    for (const link of [...this._links]) {
      link.closed = true;
      if (link.socket) ended.push(endSocket(link.socket));
    }
    this._links.clear();
    if (this._poolOpen) {
      this._poolOpen = false;
      ended.push(endSocket(this._pool));
    }
    const timeout = new Promise((resolve) => setTimeout(resolve, 1000).unref());
    Promise.race([Promise.all(ended), timeout]).then(() => {
      for (const callback of this._finishCallbacks.splice(0)) callback();
    });
  }
}

// Serves requests from the pool with HANDLER until this process should exit,
// then exits with code 0 (once the last answers were written).
function serve(handler, options = {}) {
  const client = new Client(options);
  client.serve(handler).then((code) => {
    // Let the last writes leave, then go even if the application keeps
    // handles (servers, timers) open.
    setImmediate(() => process.exit(code));
  });
  return client;
}

module.exports = {
  Client, Reply, Request, FrameDecoder, FrameType, ErrorCode, ProtocolError,
  encodeFrame, serve, WIRE_VERSION, HEADER_SIZE, MAX_PAYLOAD, PROGRESS_SCALE,
};
