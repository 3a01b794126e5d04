// The compiled server (dist/server.js): GET /health answers with the release that was built
// into it and the version of the dependency it loaded from node_modules/.
const http = require('http');
const pad = require('left-pad');
const { mode, version } = BUILT;

if (mode === 'crash-at-import') {
  throw new Error(`release ${version} throws at import`);
}

http
  .createServer((req, res) => {
    if (req.url !== '/health') {
      res.writeHead(404);
      return res.end('not found\n');
    }
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ status: 'ok', version, dep: pad.version }) + '\n');
  })
  .listen(Number(process.env.PORT || 3000), '127.0.0.1', () => {
    console.log(`release ${version} listening on ${process.env.PORT}`);
  });
