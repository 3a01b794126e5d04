// `guard watch` against the alternatives in the same run, on the demo app under real PM2:
//  - detection: kill -9 of the app's process, and /health turning 500, timed from the fault
//    to the alert arriving at a receiver on 127.0.0.1; next to the incident report's plan (an
//    external uptime monitor polling every 2 minutes) computed for the same faults;
//  - cost: guard watch's own CPU and peak RSS over a watch of a healthy app (BENCH_WATCH_SECONDS,
//    600 by default), next to a shell loop running `pm2 jlist` every 5 s for the same time.
// Node only drives the run; every number comes from the real binary, PM2 and HTTP.
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

const repo = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
const guard = path.join(repo, 'target/release/guard');
const pm2 = path.join(repo, 'tests/node/node_modules/.bin/pm2');
const root = fs.mkdtempSync(path.join(os.tmpdir(), 'guard-bench-watch-'));
const env = { ...process.env, PM2_HOME: path.join(root, 'pm2'), NO_COLOR: '1' };
const sh = (cmd) => execFileSync('sh', ['-c', cmd], { env, encoding: 'utf8' });
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const watchSeconds = Number(process.env.BENCH_WATCH_SECONDS || 600);
// Every child started, stopped if the run fails half-way.
const children = [];

async function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const p = s.address().port;
      s.close(() => resolve(p));
    });
  });
}

// The receiver: every alert with the time it arrived.
const got = [];
const receiver = http.createServer((req, res) => {
  let body = '';
  req.on('data', (c) => (body += c));
  req.on('end', () => {
    try {
      got.push({ at: Date.now(), alert: JSON.parse(body) });
    } catch {}
    res.end('ok');
  });
});

async function waitFor(event, since, limitMs) {
  const t = Date.now();
  while (Date.now() - t < limitMs) {
    const hit = got.find((g) => g.alert.event === event && g.at >= since);
    if (hit) return hit.at;
    await sleep(10);
  }
  throw new Error(`no ${event} alert within ${limitMs} ms; got: ${JSON.stringify(got.map((g) => g.alert.event + " " + g.alert.message))}`);
}

function pid() {
  const list = JSON.parse(sh(`${pm2} jlist`).split('\n').filter((l) => l.startsWith('[')).pop());
  return list.find((p) => p.name === 'demo-backend').pid;
}

async function main() {
  await new Promise((r) => receiver.listen(0, '127.0.0.1', r));
  const rport = receiver.address().port;
  const port = await freePort();
  execFileSync('bash', [path.join(repo, 'examples/fixture.sh'), 'demo', root, String(port), pm2], { env });
  const app = path.join(root, 'app');
  const config = path.join(root, 'guard.toml');
  // Watch settings as a production unit would have them, with loop_window short enough that
  // every kill here is its own crash alert.
  fs.appendFileSync(
    config,
    `\n[watch]\ninterval = "2s"\nfailures = 3\nloop_window = "1s"\nloop_restarts = 100\nrecover_after = "2s"\n\n[[alert.webhook]]\nurl = "http://127.0.0.1:${rport}/hook"\n`,
  );
  // PM2 gives up on an app restarted 3 times within min_uptime (30 s here): the kills below
  // come faster than that, so this run lets each restart count as stable after 1 s.
  const eco = path.join(app, 'ecosystem.config.js');
  fs.writeFileSync(eco, fs.readFileSync(eco, 'utf8').replace("min_uptime: '30s'", "min_uptime: '1s'"));
  sh(`${pm2} start ${eco} >/dev/null`);
  await sleep(1500);

  const watch = spawn(guard, ['--config', config, 'watch'], {
    env: { ...env, GUARD_BENCH_RUSAGE: '1' },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  children.push(watch);
  let stderr = '';
  watch.stderr.on('data', (d) => (stderr += d));
  await sleep(1500);

  const crash = [];
  for (let i = 0; i < 5; i++) {
    const t0 = Date.now();
    process.kill(pid(), 'SIGKILL');
    crash.push((await waitFor('crash', t0, 10_000)) - t0);
    await waitFor('recovered', t0, 20_000);
    await sleep(1200);
  }
  const health = [];
  for (let i = 0; i < 3; i++) {
    const t0 = Date.now();
    fs.writeFileSync(path.join(app, 'health.fail'), 'db down\n');
    health.push((await waitFor('health_failing', t0, 20_000)) - t0);
    fs.rmSync(path.join(app, 'health.fail'));
    await waitFor('recovered', t0, 30_000);
  }
  watch.kill('SIGTERM');
  await new Promise((r) => watch.on('exit', r));

  // The cost run: a fresh watcher on the healthy app, next to a jlist loop, same duration.
  const quiet = spawn(guard, ['--config', config, 'watch'], {
    env: { ...env, GUARD_BENCH_RUSAGE: '1' },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  children.push(quiet);
  let qerr = '';
  quiet.stderr.on('data', (d) => (qerr += d));
  const loop = spawn(
    'bash',
    ['-c', `end=$((SECONDS+${watchSeconds})); while [ $SECONDS -lt $end ]; do ${pm2} jlist >/dev/null; sleep 5; done; times`],
    { env, stdio: ['ignore', 'pipe', 'ignore'] },
  );
  let loopOut = '';
  loop.stdout.on('data', (d) => (loopOut += d));
  const t0 = Date.now();
  await new Promise((r) => loop.on('exit', r));
  const wall = (Date.now() - t0) / 1000;
  quiet.kill('SIGTERM');
  await new Promise((r) => quiet.on('exit', r));
  const ru = JSON.parse(qerr.split('\n').find((l) => l.includes('guard_rusage'))).guard_rusage;
  // `times`: second line is the children's user and system time, like "0m12.3s 0m1.2s".
  const secs = (t) => {
    const m = t.match(/(\d+)m([\d.]+)s/);
    return Number(m[1]) * 60 + Number(m[2]);
  };
  const childLine = loopOut.trim().split('\n').pop().split(/\s+/);
  const loopCpu = secs(childLine[0]) + secs(childLine[1]);

  const stats = (xs) => {
    const s = [...xs].sort((a, b) => a - b);
    return `median ${(s[Math.floor(s.length / 2)] / 1000).toFixed(2)} s, max ${(s[s.length - 1] / 1000).toFixed(2)} s`;
  };
  console.log('\n| fault | guard watch (alert received) | uptime monitor every 2 min (incident plan) |');
  console.log('|---|---|---|');
  console.log(`| process killed (x${crash.length}) | ${stats(crash)} | 0-120 s, 60 s on average, and a crash PM2 restarts within 2 min is never seen |`);
  console.log(`| /health turns 500 (x${health.length}; 3 failures x 2 s) | ${stats(health)} | 0-120 s |`);
  console.log(`\n| ${wall.toFixed(0)} s of a healthy app | CPU (% of one core) | peak RSS |`);
  console.log('|---|---|---|');
  console.log(`| guard watch, own | ${((ru.cpu_s / wall) * 100).toFixed(2)}% | ${(ru.max_rss_kb / 1024).toFixed(1)} MB |`);
  console.log(`| guard watch, the processes it started (PM2's list every 60 s, over its socket) | ${((ru.children_cpu_s / wall) * 100).toFixed(2)}% | - |`);
  console.log(`| shell loop: \`pm2 jlist\` every 5 s | ${((loopCpu / wall) * 100).toFixed(2)}% | - |`);
  sh(`${pm2} kill >/dev/null 2>&1 || true`);
  receiver.close();
  fs.rmSync(root, { recursive: true, force: true });
  if (stderr.includes('error')) console.error(stderr);
}

main().catch((e) => {
  console.error(e);
  for (const c of children) c.kill('SIGTERM');
  try {
    sh(`${pm2} kill >/dev/null 2>&1 || true`);
  } catch {}
  process.exit(1);
});
