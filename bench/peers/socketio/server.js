#!/usr/bin/env node
// Benchmark peer: a minimal socket.io 4 server shaped like Cortex Realtime, so the same load
// generator can measure both (see docs/benchmarks.md; started and stopped by scripts/peers).
//
//   node server.js PORT        listen on 127.0.0.1:PORT (0: any free port), then print
//                              exactly one line `listening on 127.0.0.1:<real port>` to stdout
//   node server.js PORT --redis redis://127.0.0.1:P [--redis-streams]
//                              the same, one node of several sharing rooms through that Redis
//                              (connected before it listens; 10 s at most, else exit 1):
//                              --redis alone: @socket.io/redis-adapter (Redis pub/sub; an event
//                              reaches the nodes connected at that moment, nothing is recovered);
//                              with --redis-streams: @socket.io/redis-streams-adapter (one Redis
//                              stream, at most ~10,000 entries) and connectionStateRecovery (2 min),
//                              so a client that reconnects with its pid and last offset is sent
//                              what it missed; every event then carries its offset as a last
//                              argument: 42["event","<body>","<offset>"].
//
// Rooms are channels. Clients speak engine.io v4 / socket.io v5 over a plain WebSocket at
// /socket.io/?EIO=4&transport=websocket (no HTTP long-polling, no permessage-deflate):
//
//   server: 0{"sid":...,"pingInterval":25000,"pingTimeout":20000,"maxPayload":65536,...}
//   client: 40{"token":"..."}                    connect; a missing or empty token is refused
//   server: 40{"sid":"..."}                      (refused: 44{"message":"unauthorized"})
//   client: 42N["subscribe",["org:1","agent:7"]] join rooms; N (optional) asks for an ack
//   server: 43N[2]                               ack: the number of rooms in the request
//   server: 42["event","<publish body>"]         one per publish to a room the client is in
//   server: 2 / client: 3                        ping / pong, every pingInterval
//
// HTTP:
//   POST /publish?room=R   text body (at most 65536 bytes, else 413), emitted to room R as
//                          `event` with the body as a string; 202 {"recipients":N}, N the
//                          room's size at emit time (with --redis: its members on this node
//                          only). 400 without a room, 405 for other methods.
//   anything else          404
//
// SIGTERM / SIGINT: close every connection and exit 0.
'use strict';

const http = require('node:http');
const { Server } = require('socket.io');

const HOST = '127.0.0.1';
const MAX_BODY = 65536;

const USAGE =
  'usage: node server.js PORT [--redis redis://HOST:PORT [--redis-streams]]   (PORT 0-65535; 0 picks a free port)\n';
function usage() {
  process.stderr.write(USAGE);
  process.exit(2);
}
const portArg = process.argv[2];
const port = Number(portArg);
if (portArg === undefined || !/^\d+$/.test(portArg) || port > 65535) usage();
let redisUrl = null;
let redisStreams = false;
for (let i = 3; i < process.argv.length; i++) {
  const arg = process.argv[i];
  if (arg === '--redis' && i + 1 < process.argv.length) {
    redisUrl = process.argv[++i];
  } else if (arg === '--redis-streams') {
    redisStreams = true;
  } else {
    usage();
  }
}
if (redisStreams && redisUrl === null) usage();
if (redisUrl !== null && !/^rediss?:\/\/\S+$/.test(redisUrl)) usage();

// Plain-text / JSON reply that keeps the connection alive (unless the caller asks otherwise).
function reply(res, status, body, headers = {}) {
  const data = Buffer.from(body);
  res.writeHead(status, {
    'Content-Type': status === 202 ? 'application/json' : 'text/plain; charset=utf-8',
    'Content-Length': data.length,
    ...headers,
  });
  res.end(data);
}

// Requests that are not engine.io's: socket.io attaches to the same server and passes on every
// request outside /socket.io/ to the listeners that were there before it.
function onRequest(req, res) {
  const url = new URL(req.url, `http://${HOST}`);
  if (url.pathname !== '/publish') {
    reply(res, 404, 'not found\n');
    req.resume();
    return;
  }
  if (req.method !== 'POST') {
    reply(res, 405, 'method not allowed\n', { Allow: 'POST' });
    req.resume();
    return;
  }
  const room = url.searchParams.get('room');
  if (!room) {
    reply(res, 400, 'missing ?room=\n');
    req.resume();
    return;
  }
  // An over-limit body is refused without reading it: the connection is closed after the
  // answer, so the unread bytes cannot be mistaken for the next request.
  const tooLarge = () => {
    reply(res, 413, `body over ${MAX_BODY} bytes\n`, { Connection: 'close' });
  };
  if (Number(req.headers['content-length']) > MAX_BODY) {
    tooLarge();
    return;
  }

  const chunks = [];
  let size = 0;
  let refused = false;
  req.on('data', (chunk) => {
    if (refused) return;
    size += chunk.length;
    if (size > MAX_BODY) {
      refused = true;
      tooLarge();
      return;
    }
    chunks.push(chunk);
  });
  req.on('end', () => {
    if (refused) return;
    const body = Buffer.concat(chunks, size).toString('utf8');
    const recipients = io.sockets.adapter.rooms.get(room)?.size ?? 0;
    io.to(room).emit('event', body);
    reply(res, 202, JSON.stringify({ recipients }));
  });
  req.on('error', () => {}); // a client gone mid-body: nothing to answer
}

const server = http.createServer(onRequest);
// Publishers keep one connection open for the whole run; headersTimeout must outlast the idle
// keep-alive timeout, or Node can drop a connection a request is just arriving on.
server.keepAliveTimeout = 60000;
server.headersTimeout = 65000;

const io = new Server(server, {
  transports: ['websocket'],
  perMessageDeflate: false,
  maxHttpBufferSize: MAX_BODY,
  serveClient: false, // no /socket.io/socket.io.js: the peer serves sockets and publishes only
  // The recovering mode: socket.io keeps each session (in Redis, through the streams adapter)
  // and replays what a client missed when it comes back within the window.
  ...(redisStreams
    ? { connectionStateRecovery: { maxDisconnectionDuration: 2 * 60 * 1000, skipMiddlewares: true } }
    : {}),
});

// Authentication stand-in: any non-empty string token is accepted, like a verified one would be.
io.use((socket, next) => {
  const token = socket.handshake.auth?.token;
  if (typeof token !== 'string' || token === '') {
    next(new Error('unauthorized'));
    return;
  }
  next();
});

io.on('connection', (socket) => {
  socket.on('subscribe', async (rooms, ack) => {
    if (!Array.isArray(rooms) || !rooms.every((r) => typeof r === 'string' && r !== '')) {
      if (typeof ack === 'function') ack({ error: 'rooms must be an array of non-empty strings' });
      return;
    }
    await socket.join(rooms); // synchronous with the default in-memory adapter
    if (typeof ack === 'function') ack(rooms.length);
  });
});

server.on('error', (err) => {
  process.stderr.write(`socket.io peer: ${err.message}\n`);
  process.exit(1);
});

// With --redis: the Redis clients of the adapter, connected before the port opens (so a node
// that listens is one that shares rooms), and quit on shutdown.
const redisClients = [];
async function connectRedis() {
  const { createClient } = require('redis');
  const client = (name) => {
    const c = createClient({ url: redisUrl });
    c.on('error', (err) => process.stderr.write(`socket.io peer: redis (${name}): ${err.message}\n`));
    redisClients.push(c);
    return c;
  };
  if (redisStreams) {
    const { createAdapter } = require('@socket.io/redis-streams-adapter');
    const c = client('streams');
    await c.connect();
    io.adapter(createAdapter(c));
  } else {
    const { createAdapter } = require('@socket.io/redis-adapter');
    const pub = client('pub');
    const sub = pub.duplicate();
    sub.on('error', (err) => process.stderr.write(`socket.io peer: redis (sub): ${err.message}\n`));
    redisClients.push(sub);
    await Promise.all([pub.connect(), sub.connect()]);
    io.adapter(createAdapter(pub, sub));
  }
}

function listen() {
  server.listen(port, HOST, () => {
    if (redisUrl !== null) {
      const adapter = redisStreams ? '@socket.io/redis-streams-adapter' : '@socket.io/redis-adapter';
      process.stderr.write(`socket.io peer: ${adapter} on ${redisUrl}\n`);
    }
    process.stdout.write(`listening on ${HOST}:${server.address().port}\n`);
  });
}

if (redisUrl === null) {
  listen();
} else {
  const timer = setTimeout(() => {
    process.stderr.write(`socket.io peer: no connection to ${redisUrl} within 10 s\n`);
    process.exit(1);
  }, 10000);
  connectRedis().then(
    () => {
      clearTimeout(timer);
      listen();
    },
    (err) => {
      process.stderr.write(`socket.io peer: redis ${redisUrl}: ${err.message}\n`);
      process.exit(1);
    },
  );
}

let closing = false;
function shutdown() {
  if (closing) process.exit(0); // a second signal: do not wait any longer
  closing = true;
  // Disconnects every socket and closes the HTTP server; idle keep-alive publishers are
  // dropped too. Anything that still holds on is cut by the timer.
  io.close(() => {
    if (redisClients.length === 0) process.exit(0);
    Promise.allSettled(redisClients.map((c) => c.quit())).then(() => process.exit(0));
  });
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 5000).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
