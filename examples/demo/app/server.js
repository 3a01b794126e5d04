// The demo backend that guard deploys: a tiny HTTP server with GET /health.
// What a release does is set in release.json, so a test or the demo can ship a bad
// release with a one-line commit, the way a real bad release arrives.
const fs = require('fs');
const http = require('http');
const path = require('path');

const release = JSON.parse(fs.readFileSync(path.join(__dirname, 'release.json'), 'utf8'));
const mode = release.mode || 'good';
const instance = process.env.NODE_APP_INSTANCE || '0';

// The incident: a stale dist/ from `npm run build` gets loaded and crashes the process.
const stale = path.join(__dirname, 'dist', 'index.js');
if (fs.existsSync(stale)) {
  require(stale);
}

if (mode === 'exit-silently') {
  // Dies before it says anything: PM2's own log is then the only evidence.
  process.exit(1);
}

if (mode === 'crash-at-start') {
  // Apps often log their config when they fail; guard must mask it in what it shows.
  console.error(`fatal: cannot start, SENTRY_DSN=${process.env.SENTRY_DSN}`);
  throw new Error(`release ${release.version} crashes at start`);
}

const server = http.createServer((req, res) => {
  if (req.url !== '/health') {
    res.writeHead(404);
    return res.end('not found\n');
  }
  // A file named health.fail makes /health answer 500 while the process keeps running: how
  // the tests and the demo stand for a dependency outage (a database down).
  if (mode === 'health-500' || fs.existsSync(path.join(__dirname, 'health.fail'))) {
    res.writeHead(500, { 'content-type': 'application/json' });
    return res.end(JSON.stringify({ status: 'error', version: release.version }) + '\n');
  }
  if (mode === 'degraded') {
    res.writeHead(200, { 'content-type': 'application/json' });
    return res.end(JSON.stringify({ status: 'degraded', version: release.version }) + '\n');
  }
  if (mode === 'health-hang') {
    return; // never answers
  }
  res.writeHead(200, { 'content-type': 'application/json' });
  // RELEASE_NOTE comes from the ecosystem's env: it shows which env a process started with.
  res.end(JSON.stringify({ status: 'ok', version: release.version, instance, note: process.env.RELEASE_NOTE }) + '\n');
});

// Graceful shutdown, as PM2 asks of an app for a zero-downtime reload: on SIGINT stop
// accepting connections, finish the ones in flight, then exit.
process.on('SIGINT', () => {
  server.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
});

setTimeout(() => {
  server.listen(Number(process.env.PORT || 3000), '127.0.0.1', () => {
    console.log(`release ${release.version} (${mode}) listening on ${process.env.PORT}`);
  });
}, Number(release.boot_delay_ms || 0));

const crashes = mode === 'crash-later' || (mode === 'crash-one-instance' && instance === '1');
if (crashes) {
  setTimeout(() => {
    // The wall-clock time lets bench/ measure how fast guard notices the crash.
    console.error(`release ${release.version} crashed after ${release.crash_after_ms || 1500} ms, at ${Date.now()}`);
    process.exit(1);
  }, Number(release.crash_after_ms || 1500));
}
