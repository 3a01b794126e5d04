// The deploy strategies side by side, in one run, on the demo app under real PM2: a client
// polls /health every 50 ms through each `guard deploy` and each `guard rollback` (a fresh
// connection each time) and counts the requests that got no 200. Releases: good, crashes at
// start, /health 500; then a rollback after a good deploy, timed from the command to the
// previous version answering. restart and preflight run the app in fork mode (1 instance),
// reload in cluster mode (2, and 1), switch in fork mode behind a real nginx (the client goes
// through nginx). Node only drives the run; every number comes from the real binary, PM2,
// nginx and HTTP.
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

const nginxBin = ['/usr/sbin/nginx', ...(process.env.PATH || '').split(':').map((d) => path.join(d, 'nginx'))].find((p) =>
  fs.existsSync(p),
);

// nginx on its own prefix and port, proxying to the upstream file guard owns.
function startNginx(root, appPort) {
  if (!nginxBin) throw new Error('nginx is needed for the switch rows: apt-get install -y nginx-light');
  const p = path.join(root, 'nginx');
  fs.mkdirSync(path.join(p, 'conf.d'), { recursive: true });
  fs.mkdirSync(path.join(p, 'tmp'), { recursive: true });
  return freePort().then((port) => {
    const temps = ['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'].map((t) => `  ${t}_temp_path ${p}/tmp/${t};`).join('\n');
    fs.writeFileSync(
      path.join(p, 'nginx.conf'),
      `worker_processes 1;\npid ${p}/nginx.pid;\nerror_log ${p}/error.log;\nevents { worker_connections 512; }\nhttp {\n  access_log off;\n${temps}\n  include ${p}/conf.d/*.conf;\n  server { listen 127.0.0.1:${port}; location / { proxy_pass http://demo-backend; } }\n}\n`,
    );
    const args = `-p ${p}/ -c ${p}/nginx.conf -e ${p}/error.log`;
    const upstream = path.join(p, 'conf.d/demo-backend.upstream.conf');
    const point = (to) => fs.writeFileSync(upstream, `upstream demo-backend { server 127.0.0.1:${to}; }\n`);
    point(appPort);
    execFileSync(nginxBin, args.split(' '));
    return {
      port,
      upstream,
      args,
      point,
      reload: () => execFileSync(nginxBin, [...args.split(' '), '-s', 'reload']),
      stop: () => execFileSync(nginxBin, [...args.split(' '), '-s', 'stop']),
    };
  });
}

async function setup(strategy, instances, execMode) {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), `guard-bench-${strategy}-`));
  const port = await freePort();
  const env = { ...process.env, PM2_HOME: path.join(root, 'pm2'), NO_COLOR: '1' };
  execFileSync('bash', [path.join(repo, 'examples/fixture.sh'), 'demo', root, String(port), pm2], {
    env: { ...env, STRATEGY: strategy, INSTANCES: String(instances), EXEC_MODE: execMode, STABLE_FOR: '3s', INTERVAL: '250ms' },
  });
  const sh = (cmd) => execFileSync('sh', ['-c', cmd], { env, encoding: 'utf8' });
  const git = (dir, args) => sh(`git -C ${dir} -c user.email=b@guard.invalid -c user.name=bench ${args}`);
  let nginx = null;
  if (strategy === 'switch') {
    nginx = await startNginx(root, port);
    const other = await freePort();
    fs.appendFileSync(
      path.join(root, 'guard.toml'),
      `\n[switch]\nports = [${port}, ${other}]\nnginx_upstream = "${nginx.upstream}"\ntest_command = "${nginxBin} ${nginx.args} -t -q"\nreload_command = "${nginxBin} ${nginx.args} -s reload"\ndrain = "1s"\nkeep_previous = "10m"\n`,
    );
  }
  // What the client polls: the proxy for switch, the app's port otherwise.
  const front = nginx ? nginx.port : port;
  return { root, port, front, nginx, env, sh, git, app: path.join(root, 'app'), up: path.join(root, 'upstream') };
}

function runGuard(f, args) {
  return new Promise((resolve) => {
    execFile(guard, ['--config', path.join(f.root, 'guard.toml'), '-q', ...args], { env: f.env }, (err) =>
      resolve(err ? err.code : 0),
    );
  });
}

async function main() {
  const setups = [
    ['restart', 1, 'fork'],
    ['preflight', 1, 'fork'],
    ['reload', 2, 'cluster'],
    ['reload', 1, 'cluster'],
    ['switch', 1, 'fork'],
  ];
  const releases = [
    ['good', { mode: 'good' }],
    ['crashes at start', { mode: 'crash-at-start' }],
    ['/health answers 500', { mode: 'health-500' }],
    ['rollback after a good deploy', { mode: 'good' }],
  ];
  const rows = [];
  for (const [strategy, instances, execMode] of setups) {
    const f = await setup(strategy, instances, execMode);
    f.sh(`${pm2} start ${f.app}/ecosystem.config.js >/dev/null`);
    for (let i = 0; i < 100 && (await get(f.front)).version !== 'v1'; i++) await sleep(100);
    const v1 = f.git(f.app, 'rev-parse HEAD').trim();
    for (const [name, json] of releases) {
      const rollback = name.startsWith('rollback');
      const fails = [];
      const secs = [];
      const answered = [];
      let after = '';
      let code = 0;
      for (let t = 0; t < trials; t++) {
        // Back to v1, running as before any guard run, before every trial.
        f.git(f.up, `reset -q --hard ${v1}`);
        f.git(f.up, 'push -q -f origin HEAD:main');
        f.git(f.app, `reset -q --hard ${v1}`);
        f.sh(`${pm2} delete all >/dev/null 2>&1; rm -f ${f.root}/backups/switch-*.json; ${pm2} start ${f.app}/ecosystem.config.js >/dev/null`);
        if (f.nginx) {
          f.nginx.point(f.port);
          f.nginx.reload();
        }
        for (let i = 0; i < 100 && (await get(f.front)).version !== 'v1'; i++) await sleep(100);
        await sleep(300);
        fs.writeFileSync(path.join(f.up, 'release.json'), JSON.stringify({ version: 'v2', ...json }));
        f.git(f.up, 'commit -qam v2');
        f.git(f.up, 'push -q origin HEAD:main');
        if (rollback) {
          // The deploy is not measured here (the good row is); the rollback is.
          code = await runGuard(f, ['deploy']);
          if (code !== 0) throw new Error(`${strategy}: the deploy before the rollback failed (exit ${code})`);
          await sleep(300);
        }
        const stop = poller(f.front);
        await sleep(200);
        const t0 = Date.now();
        // Asynchronous, so the pollers in this process keep polling while guard runs.
        let seenAt = null;
        let watching = rollback;
        const watcher = (async () => {
          while (watching) {
            if ((await get(f.front)).version === 'v1') {
              seenAt = Date.now();
              return;
            }
            await sleep(20);
          }
        })();
        code = await runGuard(f, rollback ? ['rollback', 'latest'] : ['deploy']);
        secs.push((Date.now() - t0) / 1000);
        if (rollback) {
          for (let i = 0; i < 100 && seenAt === null; i++) await sleep(20);
          watching = false;
          await watcher;
          answered.push(seenAt === null ? null : (seenAt - t0) / 1000);
        }
        await sleep(200);
        const [, failed] = await stop();
        fails.push(failed);
        after = (await get(f.front)).version || 'nothing';
      }
      const shape = strategy === 'switch' ? 'fork, nginx' : instances === 1 && execMode === 'fork' ? 'fork' : `cluster x${instances}`;
      rows.push({ strategy: `${strategy} (${shape})`, name, fails, secs, answered, code, after });
    }
    f.sh(`${pm2} kill >/dev/null 2>&1 || true`);
    if (f.nginx) f.nginx.stop();
    fs.rmSync(f.root, { recursive: true, force: true });
  }
  const med = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  console.log(`\n| strategy | release | failed requests (each of ${trials} runs) | command time (median) | to v1 answering (median) | exit | serving after |`);
  console.log('|---|---|---|---|---|---|---|');
  for (const r of rows) {
    const toV1 = r.answered.length ? (r.answered.includes(null) ? 'never' : `${med(r.answered).toFixed(2)} s`) : '';
    console.log(`| ${r.strategy} | ${r.name} | ${r.fails.join(', ')} | ${med(r.secs).toFixed(2)} s | ${toV1} | ${r.code} | ${r.after} |`);
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
