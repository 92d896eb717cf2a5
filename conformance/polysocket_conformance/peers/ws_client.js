// A Node `ws` client (not polysocket) for the server half of the conformance suite.
//
//   node ws_client.js URI CLOSE_CODE MESSAGE...
//
// Connects, sends each MESSAGE as text, waits for one reply per message, then closes with
// CLOSE_CODE. Prints one JSON line per event: {"event": "open"}, {"event": "message",
// "data": ...}, {"event": "close", "code": ..., "reason": ...}, {"event": "error", ...}.
// POLYSOCKET_WS_HEADERS, a JSON object, gives extra request headers (Authorization...).
'use strict';

const WebSocket = require(process.env.POLYSOCKET_WS_PATH || 'ws');

const [uri, closeCode, ...messages] = process.argv.slice(2);
const print = (event) => process.stdout.write(JSON.stringify(event) + '\n');

const headers = JSON.parse(process.env.POLYSOCKET_WS_HEADERS || '{}');
const ws = new WebSocket(uri, { headers });
let replies = 0;
ws.on('open', () => {
  print({ event: 'open' });
  for (const message of messages) ws.send(message);
  if (messages.length === 0) ws.close(Number(closeCode), 'node done');
});
ws.on('message', (data, isBinary) => {
  print({ event: 'message', data: isBinary ? data.toString('hex') : data.toString() });
  replies += 1;
  if (replies === messages.length) ws.close(Number(closeCode), 'node done');
});
ws.on('unexpected-response', (request, response) => {
  print({ event: 'rejected', status: response.statusCode });
  process.exit(0);
});
ws.on('error', (error) => print({ event: 'error', message: String(error.message) }));
ws.on('close', (code, reason) => {
  print({ event: 'close', code, reason: reason.toString() });
  process.exit(0);
});
setTimeout(() => { print({ event: 'timeout' }); process.exit(1); }, 15000);
