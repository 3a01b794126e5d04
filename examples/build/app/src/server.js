// The compiled server (dist/server.js): loads every plugin in dist/plugins/, as route
// loaders do, and answers GET /health with the release built into it, the version of the
// dependency it loaded from node_modules/ and the plugins it loaded.
const fs = require('fs');
const http = require('http');
const path = require('path');
const pad = require('left-pad');
const { mode, version } = BUILT;

if (mode === 'crash-at-import') {
  throw new Error(`release ${version} throws at import`);
}

const dir = path.join(__dirname, 'plugins');
const plugins = fs
  .readdirSync(dir)
  .filter((f) => f.endsWith('.js'))
  .sort()
  .map((f) => require(path.join(dir, f)).name);

http
  .createServer((req, res) => {
    if (req.url !== '/health') {
      res.writeHead(404);
      return res.end('not found\n');
    }
    if (mode === 'health-500') {
      console.error(`release ${version}: /health failing on purpose`);
      res.writeHead(500, { 'content-type': 'application/json' });
      return res.end(JSON.stringify({ status: 'error', version }) + '\n');
    }
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ status: 'ok', version, dep: pad.version, plugins }) + '\n');
  })
  .listen(Number(process.env.PORT || 3000), process.env.HOST || '127.0.0.1', () => {
    console.log(`release ${version} listening on ${process.env.HOST || '127.0.0.1'}:${process.env.PORT}`);
  });
