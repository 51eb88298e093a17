'use strict';
// A fake pool for the library's tests: starts a script as a child with its
// pool channel on fd 3 (a socketpair, as the Watcher gives it), reads and
// writes control frames on it, and makes links the way the Watcher does for
// a child that asked for links by connect: a Unix socket path it listens on.

const {spawn} = require('node:child_process');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const wp = require('../workerpool.js');

// Reads frames from a socket; read() resolves to the next one.
class FrameReader {
  constructor(socket) {
    this.decoder = new wp.FrameDecoder();
    this.frames = [];
    this.waiters = [];
    this.ended = false;
    socket.on('data', (data) => {
      this.decoder.feed(data);
      for (let f = this.decoder.next(); f !== null; f = this.decoder.next()) {
        const frame = {...f, meta: Buffer.from(f.meta), body: Buffer.from(f.body)};
        const waiter = this.waiters.shift();
        if (waiter) waiter.resolve(frame); else this.frames.push(frame);
      }
    });
    const end = () => {
      this.ended = true;
      for (const waiter of this.waiters.splice(0)) waiter.resolve(null);
    };
    socket.on('end', end);
    socket.on('close', end);
    socket.on('error', end);
  }

  // The next frame (null at EOF); rejects after TIMEOUT ms.
  read(timeout = 10000) {
    if (this.frames.length) return Promise.resolve(this.frames.shift());
    if (this.ended) return Promise.resolve(null);
    return new Promise((resolve, reject) => {
      const waiter = {resolve: (f) => { clearTimeout(timer); resolve(f); }};
      const timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(waiter), 1);
        reject(new Error(`no frame within ${timeout} ms`));
      }, timeout);
      this.waiters.push(waiter);
    });
  }

  // The next frame of TYPE, skipping others (heartbeats, stats).
  async readType(type, timeout = 10000) {
    const until = Date.now() + timeout;
    for (;;) {
      const frame = await this.read(Math.max(1, until - Date.now()));
      if (frame === null || frame.type === type) return frame;
    }
  }
}

class FakePool {
  constructor(script, {env = {}, args = []} = {}) {
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'wp-node-test-'));
    fs.chmodSync(this.dir, 0o700);
    this.paths = 0;
    this.output = '';
    this.child = spawn(process.execPath, [script, ...args], {
      stdio: ['ignore', 'pipe', 'pipe', 'pipe'],
      env: {...process.env, WORKERPOOL_IPC_FD: '3', WORKERPOOL_GROUP: 'js',
            WORKERPOOL_INDEX: '0', ...env},
    });
    this.child.stdout.on('data', (d) => { this.output += d; });
    this.child.stderr.on('data', (d) => { this.output += d; });
    this.exited = new Promise((resolve) => this.child.on('exit', (code, signal) =>
      resolve({code, signal})));
    this.channel = this.child.stdio[3];
    this.reader = new FrameReader(this.channel);
  }

  send(type, body) {
    this.channel.write(wp.encodeFrame(type, 0, 0, null, JSON.stringify(body)));
  }

  // Announces a link to the child: it connects to a fresh path; resolves to
  // our end (a socket) with a FrameReader on it.
  async addLink(role = 'server', group = 'front', index = 0, pid = 1) {
    const where = path.join(this.dir, `${++this.paths}.sock`);
    const server = net.createServer();
    await new Promise((resolve) => server.listen(where, resolve));
    const accepted = new Promise((resolve) => server.once('connection', resolve));
    this.send(wp.FrameType.PEER_ADDED, {role, group, index, pid, path: where});
    const socket = await accepted;
    server.close();
    socket.reader = new FrameReader(socket);
    return socket;
  }

  async waitExit(timeout = 10000) {
    let timer;
    const limit = new Promise((resolve) => {
      timer = setTimeout(() => resolve(null), timeout);
    });
    const result = await Promise.race([this.exited, limit]);
    clearTimeout(timer);
    return result;
  }

  close() {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      this.child.kill('SIGKILL');
    }
    this.channel.destroy();
    fs.rmSync(this.dir, {recursive: true, force: true});
  }
}

module.exports = {FakePool, FrameReader};
