#!/usr/bin/env node
// Benchmark peer: a minimal socket.io 4 server shaped like Cortex Realtime, so the same load
// generator can measure both (see docs/benchmarks.md; started and stopped by scripts/peers).
//
//   node server.js PORT        listen on 127.0.0.1:PORT (0: any free port), then print
//                              exactly one line `listening on 127.0.0.1:<real port>` to stdout
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
//                          room's size at emit time. 400 without a room, 405 for other methods.
//   anything else          404
//
// SIGTERM / SIGINT: close every connection and exit 0.
'use strict';

const http = require('node:http');
const { Server } = require('socket.io');

const HOST = '127.0.0.1';
const MAX_BODY = 65536;

const portArg = process.argv[2];
const port = Number(portArg);
if (portArg === undefined || !/^\d+$/.test(portArg) || port > 65535) {
  process.stderr.write('usage: node server.js PORT   (0-65535; 0 picks a free port)\n');
  process.exit(2);
}

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

server.listen(port, HOST, () => {
  process.stdout.write(`listening on ${HOST}:${server.address().port}\n`);
});

let closing = false;
function shutdown() {
  if (closing) process.exit(0); // a second signal: do not wait any longer
  closing = true;
  // Disconnects every socket and closes the HTTP server; idle keep-alive publishers are
  // dropped too. Anything that still holds on is cut by the timer.
  io.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 5000).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
