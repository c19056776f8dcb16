// http_node.js: Node's `http` module doing what scripts/demo/http_server.lua
// does, for the wrk comparison in http_wrk.sh: GET / (and HEAD /) answers
// "Hello, World!" (text/plain, Content-Length, keep-alive), anything else
// is a 404. Listens on 127.0.0.1:PORT (0: any free port) and prints
// "listening on http://127.0.0.1:PORT/", like the Lua server.
//
//   node tests/bench/http_node.js [port]
'use strict';
const http = require('http');

const port = Number(process.argv[2] || 8081);
const server = http.createServer((req, res) => {
  const found = (req.method === 'GET' || req.method === 'HEAD') && req.url === '/';
  const body = found ? 'Hello, World!' : 'not found\n';
  res.writeHead(found ? 200 : 404, {'Content-Type': 'text/plain', 'Content-Length': body.length});
  res.end(req.method === 'HEAD' ? undefined : body);
});
server.listen(port, '127.0.0.1', () => {
  console.log(`listening on http://127.0.0.1:${server.address().port}/`);
});
