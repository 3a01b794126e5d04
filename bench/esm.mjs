// The crash PM2 hides: a release whose ESM entry throws at import. PM2 (7.0.4) keeps such a
// process `online` and never restarts it. This bench deploys it with `guard deploy`
// (strategy restart) with guard's load-error rule on (the default) and off
// (`health.load_errors = false`: how guard behaved before, waiting for health.deadline), and a
// CommonJS release that throws at start as the reference, each on the same app in one run.
// A client polls /health every 50 ms (a fresh connection each time) through each deploy and
// counts the failed requests; time to verdict is guard's own `elapsed_ms`. Every number comes
// from the real guard binary, real PM2 and real HTTP on 127.0.0.1.
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import net from 'node:net';
import http from 'node:http';

const repo = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
const guard = path.join(repo, 'target/release/guard');
const pm2 = path.join(repo, 'tests/node/node_modules/.bin/pm2');
const root = fs.mkdtempSync(path.join(os.tmpdir(), 'guard-bench-esm-'));
const env = { ...process.env, PM2_HOME: path.join(root, 'pm2'), NO_COLOR: '1' };
const sh = (cmd) => execFileSync('sh', ['-c', cmd], { env, encoding: 'utf8' });
const git = (dir, args) => sh(`git -C ${dir} -c user.email=b@guard.invalid -c user.name=bench ${args}`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const DEADLINE = '60s';

async function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const p = s.address().port;
      s.close(() => resolve(p));
    });
  });
}

// guard runs as a child the event loop does not wait on, so the poller keeps polling.
function run(cmd, args) {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { env });
    let stdout = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.resume();
    child.on('close', (status) => resolve({ status, stdout }));
  });
}

function get(port) {
  return new Promise((resolve) => {
    const req = http.get({ host: '127.0.0.1', port, path: '/health', agent: false, timeout: 2000 }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode));
    });
    req.on('error', () => resolve(0));
    req.on('timeout', () => {
      req.destroy();
      resolve(0);
    });
  });
}

function poller(port) {
  let stop = false;
  let total = 0;
  let failed = 0;
  const done = (async () => {
    while (!stop) {
      total++;
      if ((await get(port)) !== 200) failed++;
      await sleep(50);
    }
  })();
  return async () => {
    stop = true;
    await done;
    return { total, failed };
  };
}

const releases = [
  {
    name: 'ESM entry throws at import, load_errors on (default)',
    esm: true,
    loadErrors: true,
  },
  {
    name: 'ESM entry throws at import, load_errors off (guard before)',
    esm: true,
    loadErrors: false,
  },
  { name: 'CommonJS entry throws at start (reference)', esm: false, loadErrors: true },
];

async function main() {
  const port = await freePort();
  const upstream = path.join(root, 'upstream');
  const app = path.join(root, 'app');
  execFileSync('bash', [path.join(repo, 'examples/fixture.sh'), 'demo', root, String(port), pm2], {
    env: { ...env, STABLE_FOR: '5s', DEADLINE, TIMEOUT: '2s', INTERVAL: '250ms' },
  });
  fs.writeFileSync(path.join(app, 'env.env'), `PORT=${port}\n`);
  const config = path.join(root, 'guard.toml');
  const base = fs.readFileSync(config, 'utf8');
  const v1 = git(app, 'rev-parse HEAD').trim();
  const eco = fs.readFileSync(path.join(upstream, 'ecosystem.config.js'), 'utf8');
  sh(`${pm2} start ${app}/ecosystem.config.js >/dev/null`);

  const rows = [];
  for (const [i, rel] of releases.entries()) {
    git(upstream, `reset -q --hard ${v1}`);
    if (rel.esm) {
      fs.writeFileSync(path.join(upstream, 'ecosystem.config.js'), eco.replace("script: 'server.js'", "script: 'server.mjs'"));
      fs.writeFileSync(path.join(upstream, 'server.mjs'), "import './lib/not-there.mjs';\n");
    } else {
      fs.writeFileSync(path.join(upstream, 'release.json'), JSON.stringify({ version: `v${i + 2}`, mode: 'crash-at-start' }) + '\n');
    }
    git(upstream, 'add -A');
    git(upstream, `commit -qm rel${i}`);
    git(upstream, 'push -q --force origin main');
    git(app, `reset -q --hard ${v1}`);
    sh(`${pm2} delete demo-backend >/dev/null 2>&1 || true; ${pm2} start ${app}/ecosystem.config.js --only demo-backend >/dev/null`);
    for (let k = 0; k < 100 && (await get(port)) !== 200; k++) await sleep(100);
    fs.writeFileSync(config, base.replace('[health]\n', `[health]\nload_errors = ${rel.loadErrors}\n`));

    const stop = poller(port);
    const t0 = Date.now();
    const r = await run(guard, ['--config', config, '--json', 'deploy']);
    const wall = (Date.now() - t0) / 1000;
    const polled = await stop();
    const doc = JSON.parse(r.stdout);
    const v = doc.data.verdict;
    rows.push({ rel, code: r.status, wall, polled, v });
  }
  sh(`${pm2} kill >/dev/null 2>&1 || true`);

  const lines = [];
  lines.push(`Machine: ${os.cpus().length} × ${os.cpus()[0].model.trim()}, Node ${process.version}, pm2 ${sh(`${pm2} --version`).trim().split('\n').pop()}; strategy restart, health.deadline = ${DEADLINE}, stable_for = 5s; a client polls /health every 50 ms; ${new Date().toISOString().slice(0, 10)}.`);
  lines.push('');
  lines.push('| release | exit | verdict after | verdict | deploy took | failed requests (of) |');
  lines.push('|---|---|---|---|---|---|');
  for (const r of rows) {
    const msg = r.v ? r.v.message.replace(/\|/g, '/').slice(0, 90) : '-';
    const after = r.v ? `${(r.v.elapsed_ms / 1000).toFixed(2)} s` : '-';
    lines.push(`| ${r.rel.name} | ${r.code} | ${after} | ${msg} | ${r.wall.toFixed(1)} s | ${r.polled.failed} (${r.polled.total}) |`);
  }
  console.log(lines.join('\n'));
  fs.rmSync(root, { recursive: true, force: true });
}

main().catch((e) => {
  spawnSync('sh', ['-c', `${pm2} kill >/dev/null 2>&1`], { env });
  console.error(e);
  process.exit(1);
});
