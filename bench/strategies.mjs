// The three deploy strategies side by side, in one run, on the demo app under real PM2: a
// client polls /health every 50 ms through each `guard deploy` (a fresh connection each time)
// and counts the requests that got no 200. Releases: good, crashes at start, /health 500.
// restart and preflight run the app in fork mode (1 instance), reload in cluster mode (2).
// Node only drives the run; every number comes from the real binary, PM2 and HTTP.
import { execFile, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

const repo = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
const guard = path.join(repo, 'target/release/guard');
const pm2 = path.join(repo, 'tests/node/node_modules/.bin/pm2');
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const trials = Number(process.env.BENCH_TRIALS || 3);

async function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const p = s.address().port;
      s.close(() => resolve(p));
    });
  });
}

function get(port) {
  return new Promise((resolve) => {
    const req = http.get({ host: '127.0.0.1', port, path: '/health', agent: false, timeout: 2000 }, (res) => {
      let body = '';
      res.on('data', (c) => (body += c));
      res.on('end', () => {
        let version = null;
        try {
          version = JSON.parse(body).version;
        } catch {}
        resolve({ ok: res.statusCode === 200, version });
      });
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve({ ok: false, version: null }));
  });
}

// Polls every 50 ms until stopped; returns [requests, failed].
function poller(port) {
  let stop = false;
  let total = 0;
  let failed = 0;
  const done = (async () => {
    while (!stop) {
      const t = Date.now();
      const r = await get(port);
      total += 1;
      if (!r.ok) failed += 1;
      await sleep(Math.max(0, 50 - (Date.now() - t)));
    }
    return [total, failed];
  })();
  return () => {
    stop = true;
    return done;
  };
}

function setup(strategy, instances) {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), `guard-bench-${strategy}-`));
  return freePort().then((port) => {
    const env = { ...process.env, PM2_HOME: path.join(root, 'pm2'), NO_COLOR: '1' };
    execFileSync('bash', [path.join(repo, 'examples/fixture.sh'), 'demo', root, String(port), pm2], {
      env: { ...env, STRATEGY: strategy, INSTANCES: String(instances), STABLE_FOR: '3s', INTERVAL: '250ms' },
    });
    const sh = (cmd) => execFileSync('sh', ['-c', cmd], { env, encoding: 'utf8' });
    const git = (dir, args) => sh(`git -C ${dir} -c user.email=b@guard.invalid -c user.name=bench ${args}`);
    return { root, port, env, sh, git, app: path.join(root, 'app'), up: path.join(root, 'upstream') };
  });
}

async function main() {
  const setups = [
    ['restart', 1],
    ['preflight', 1],
    ['reload', 2],
  ];
  const releases = [
    ['good', { mode: 'good' }],
    ['crashes at start', { mode: 'crash-at-start' }],
    ['/health answers 500', { mode: 'health-500' }],
  ];
  const rows = [];
  for (const [strategy, instances] of setups) {
    const f = await setup(strategy, instances);
    f.sh(`${pm2} start ${f.app}/ecosystem.config.js >/dev/null`);
    for (let i = 0; i < 100 && (await get(f.port)).version !== 'v1'; i++) await sleep(100);
    const v1 = f.git(f.app, 'rev-parse HEAD').trim();
    for (const [name, json] of releases) {
      const fails = [];
      const secs = [];
      let after = '';
      let code = 0;
      for (let t = 0; t < trials; t++) {
        // Back to v1, running, before every trial.
        f.git(f.up, `reset -q --hard ${v1}`);
        f.git(f.up, 'push -q -f origin HEAD:main');
        f.git(f.app, `reset -q --hard ${v1}`);
        f.sh(`${pm2} delete demo-backend >/dev/null 2>&1; ${pm2} start ${f.app}/ecosystem.config.js >/dev/null`);
        for (let i = 0; i < 100 && (await get(f.port)).version !== 'v1'; i++) await sleep(100);
        await sleep(300);
        fs.writeFileSync(path.join(f.up, 'release.json'), JSON.stringify({ version: 'v2', ...json }));
        f.git(f.up, 'commit -qam v2');
        f.git(f.up, 'push -q origin HEAD:main');
        const stop = poller(f.port);
        await sleep(200);
        const t0 = Date.now();
        // Asynchronous, so the poller in this process keeps polling while guard runs.
        code = await new Promise((resolve) => {
          execFile(guard, ['--config', path.join(f.root, 'guard.toml'), '-q', 'deploy'], { env: f.env }, (err) =>
            resolve(err ? err.code : 0),
          );
        });
        secs.push((Date.now() - t0) / 1000);
        await sleep(200);
        const [, failed] = await stop();
        fails.push(failed);
        after = (await get(f.port)).version || 'nothing';
      }
      rows.push({ strategy: `${strategy} (${instances === 1 ? 'fork' : `cluster x${instances}`})`, name, fails, secs, code, after });
    }
    f.sh(`${pm2} kill >/dev/null 2>&1 || true`);
    fs.rmSync(f.root, { recursive: true, force: true });
  }
  const med = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  console.log(`\n| strategy | release | failed requests (each of ${trials} runs) | deploy time (median) | exit | serving after |`);
  console.log('|---|---|---|---|---|---|');
  for (const r of rows) {
    console.log(`| ${r.strategy} | ${r.name} | ${r.fails.join(', ')} | ${med(r.secs).toFixed(2)} s | ${r.code} | ${r.after} |`);
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
