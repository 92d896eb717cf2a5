// Echo peer on Node's `ws` package (not on polysocket), for the polysocket conformance suite.
//
// Started by the suite as a subprocess: `node ws_peer.js [--port N]`. It prints `PORT <n>` on
// its first stdout line, then serves until stdin closes or it is terminated. `ws` is loaded
// from $POLYSOCKET_WS_PATH (the package directory) when set, else resolved normally
// (peers/node_modules). Same command protocol as websockets_peer.py, on any path:
//
//   any text/binary message        echoed back unchanged, except text starting with "cmd:"
//   cmd:close:<code>:<reason>      close the connection with that code and reason
//   cmd:big:<n>                    send one binary message of n bytes
//   cmd:kill                       drop the TCP connection without a close frame
//   cmd:headers                    reply with JSON of the handshake request headers (lower-case)
//   cmd:subprotocol                reply with the negotiated subprotocol, or ""
//   cmd:last-close                 reply with JSON {"code", "reason", "messages"} of the most
//                                  recent other connection that ended here (1006/null when no
//                                  close frame arrived); waits (up to 3 s) for connections
//                                  opened before this one to end first
//   cmd:burst:<n>                  send n text messages "0", "1", ... as fast as possible
//   cmd:frag:<n>                   send one text message "0;1;...;n-1;" in n fragments
//
// A handshake on path /reject is refused with HTTP 404. Messages up to 64 MiB are accepted.
'use strict';

const WebSocket = require(process.env.POLYSOCKET_WS_PATH || 'ws');

const MAX_SIZE = 64 * 1024 * 1024;
const ABNORMAL = 1006;
const BURST_CHUNK = 1000;

let serial = 0;
const live = new Map(); // serial -> Promise resolved when that connection has ended
let lastClose = { code: ABNORMAL, reason: null, messages: 0 };

const portArg = process.argv.indexOf('--port');
const port = portArg >= 0 ? Number(process.argv[portArg + 1]) : 0;

const server = new WebSocket.WebSocketServer({
  host: '127.0.0.1',
  port,
  maxPayload: MAX_SIZE,
  perMessageDeflate: false,
  verifyClient: (info, callback) => {
    if (info.req.url.split('?')[0] === '/reject') {
      callback(false, 404, 'Not Found');
    } else {
      callback(true);
    }
  },
  handleProtocols: (protocols) => {
    for (const protocol of protocols) return protocol;
    return false;
  },
});

server.on('listening', () => {
  process.stdout.write(`PORT ${server.address().port}\n`);
});

server.on('connection', (ws, request) => {
  const id = ++serial;
  let markEnded;
  live.set(id, new Promise((resolve) => { markEnded = resolve; }));
  let received = 0;
  const headers = {};
  for (const [key, value] of Object.entries(request.headers)) {
    headers[key.toLowerCase()] = Array.isArray(value) ? value.join(', ') : value;
  }

  // Messages are handled one after another (a burst finishes before the next message is
  // handled), exactly like the websockets peer's `async for` loop.
  let chain = Promise.resolve();
  ws.on('message', (data, isBinary) => {
    if (!isBinary && data.length >= 4 && data.toString('latin1', 0, 4) === 'cmd:') {
      chain = chain.then(() => command(ws, id, data.toString('utf8'), headers));
      return;
    }
    received += 1;
    chain = chain.then(() => {
      if (ws.readyState === WebSocket.OPEN) ws.send(data, { binary: isBinary });
    });
  });
  ws.on('close', (code, reason) => {
    lastClose = code === ABNORMAL
      ? { code: ABNORMAL, reason: null, messages: received }
      : { code, reason: reason.toString('utf8'), messages: received };
    live.delete(id);
    markEnded();
  });
  ws.on('error', () => {}); // the 'close' event follows and records it
});

// Returns a promise when the command takes time (the next message waits for it).
function command(ws, id, text, headers) {
  if (ws.readyState !== WebSocket.OPEN) return undefined;
  const [, name, ...rest] = text.split(':');
  const args = rest;
  switch (name) {
    case 'close': {
      const code = Number(args[0]);
      const reason = args.slice(1).join(':');
      ws.close(code, reason);
      break;
    }
    case 'big':
      ws.send(Buffer.alloc(Number(args[0]), 0x78), { binary: true });
      break;
    case 'kill':
      ws.terminate();
      break;
    case 'headers':
      ws.send(JSON.stringify(headers));
      break;
    case 'subprotocol':
      ws.send(ws.protocol || '');
      break;
    case 'last-close': {
      const earlier = [...live.entries()].filter(([other]) => other < id).map(([, p]) => p);
      const timeout = new Promise((resolve) => setTimeout(resolve, 3000).unref());
      return Promise.race([Promise.all(earlier), timeout]).then(() => {
        if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(lastClose));
      });
    }
    case 'burst':
      return burst(ws, Number(args[0]));
    case 'frag': {
      const n = Number(args[0]);
      for (let i = 0; i < n; i++) ws.send(`${i};`, { binary: false, fin: i === n - 1 });
      break;
    }
    default:
      ws.send(`unknown command ${JSON.stringify(text)}`);
  }
  return undefined;
}

// Sends in chunks; the next chunk goes once the previous one was written out, so a huge n
// streams with flow control instead of piling up in memory. Resolves when done (or closed).
function burst(ws, n) {
  return new Promise((resolve) => {
    let i = 0;
    function pump() {
      while (i < n) {
        if (ws.readyState !== WebSocket.OPEN) return resolve();
        const end = Math.min(n, i + BURST_CHUNK);
        for (; i < end - 1; i++) ws.send(String(i));
        i = end;
        if (end < n) {
          ws.send(String(end - 1), (err) => (err ? resolve() : pump()));
          return undefined;
        }
        ws.send(String(end - 1));
      }
      return resolve();
    }
    pump();
  });
}

// Die with the test session even when it could not terminate us (e.g. it was killed).
if (!process.argv.includes('--no-stdin-watch')) {
  process.stdin.on('end', () => process.exit(0));
  process.stdin.on('error', () => process.exit(0));
  process.stdin.resume();
}
