// Good deploys on a busy host: BENCH_DEPLOYS (20) good releases deployed one after the other
// while two CPU-bound processes run beside them (as `npm ci` or `tsc` would), at guard's
// default health settings, with a timed-out probe retried (`health.timeouts_in_a_row = 3`, the
// default) and counted at once (`= 1`, guard before), side by side in one run; then one
// release whose /health hangs, to show it is still failed within the retries' timeouts. A
// false verdict is a good release rolled back. Every number comes from the real guard
// binary, real PM2 and real HTTP on 127.0.0.1.
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import net from 'node:net';
import http from 'node:http';

const repo = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
const guard = path.join(repo, 'target/release/guard');
const pm2 = path.join(repo, 'tests/node/node_modules/.bin/pm2');
const root = fs.mkdtempSync(path.join(os.tmpdir(), 'guard-bench-load-'));
const env = { ...process.env, PM2_HOME: path.join(root, 'pm2'), NO_COLOR: '1' };
const sh = (cmd) => execFileSync('sh', ['-c', cmd], { env, encoding: 'utf8' });
const git = (dir, args) => sh(`git -C ${dir} -c user.email=b@guard.invalid -c user.name=bench ${args}`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const DEPLOYS = Number(process.env.BENCH_DEPLOYS || 20);

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


async function main() {
  const port = await freePort();
  const upstream = path.join(root, 'upstream');
  const app = path.join(root, 'app');
  // guard's defaults: timeout 2s, deadline 60s, stable_for 10s, interval 250ms.
  execFileSync('bash', [path.join(repo, 'examples/fixture.sh'), 'demo', root, String(port), pm2], {
    env: { ...env, STABLE_FOR: '10s', DEADLINE: '60s', TIMEOUT: '2s', INTERVAL: '250ms' },
  });
  fs.writeFileSync(path.join(app, 'env.env'), `PORT=${port}\n`);
  const config = path.join(root, 'guard.toml');
  const base = fs.readFileSync(config, 'utf8');
  sh(`${pm2} start ${app}/ecosystem.config.js >/dev/null`);
  for (let k = 0; k < 100 && (await get(port)) !== 200; k++) await sleep(100);
  const burners = [0, 1].map(() => spawn(process.execPath, ['-e', 'for(;;){}'], { stdio: 'ignore' }));
  let n = 0;
  const release = (mode) => {
    n++;
    fs.writeFileSync(path.join(upstream, 'release.json'), JSON.stringify({ version: `v${n + 1}`, mode }) + '\n');
    git(upstream, `commit -qam v${n + 1}`);
    git(upstream, 'push -q origin main');
  };
  const deploy = () => {
    const r = spawnSync(guard, ['--config', config, '--json', 'deploy'], { env, encoding: 'utf8' });
    return { code: r.status, doc: JSON.parse(r.stdout) };
  };
  const rows = [];
  for (const inARow of [3, 1]) {
    fs.writeFileSync(config, base.replace('[health]\n', `[health]\ntimeouts_in_a_row = ${inARow}\n`));
    let falseVerdicts = 0;
    const reasons = [];
    let secs = 0;
    for (let i = 0; i < DEPLOYS; i++) {
      release('good');
      const t0 = Date.now();
      const g = deploy();
      secs += (Date.now() - t0) / 1000;
      if (g.code !== 0) {
        falseVerdicts++;
        reasons.push(g.doc.data.verdict ? g.doc.data.verdict.message : g.doc.reason);
      }
    }
    release('health-hang');
    const hang = deploy();
    const hv = hang.doc.data.verdict;
    rows.push({ inARow, falseVerdicts, reasons, avg: secs / DEPLOYS, hang, hv });
    // Back to a good release for the next series.
    release('good');
    deploy();
  }
  burners.forEach((b) => b.kill('SIGKILL'));
  sh(`${pm2} kill >/dev/null 2>&1 || true`);

  const lines = [];
  lines.push(`Machine: ${os.cpus().length} × ${os.cpus()[0].model.trim()}, Node ${process.version}, two CPU-bound processes beside every deploy; health.timeout = 2s, stable_for = 10s, interval = 250ms (the defaults); ${new Date().toISOString().slice(0, 10)}.`);
  lines.push('');
  lines.push('| timeouts_in_a_row | good deploys | false verdicts (rolled back) | mean deploy time | a hanging /health: exit, verdict after |');
  lines.push('|---|---|---|---|---|');
  for (const r of rows) {
    const hang = r.hv ? `${r.hang.code}, ${(r.hv.elapsed_ms / 1000).toFixed(1)} s (${r.hv.message.replace(/\|/g, '/').slice(0, 60)})` : `${r.hang.code}`;
    lines.push(`| ${r.inARow}${r.inARow === 3 ? ' (default)' : ' (guard before)'} | ${DEPLOYS} | ${r.falseVerdicts} | ${r.avg.toFixed(1)} s | ${hang} |`);
  }
  for (const r of rows.filter((r) => r.reasons.length)) {
    lines.push('');
    lines.push(`With timeouts_in_a_row = ${r.inARow}, the false verdicts said: ${[...new Set(r.reasons.map((m) => m.slice(0, 100)))].join('; ')}`);
  }
  console.log(lines.join('\n'));
  fs.rmSync(root, { recursive: true, force: true });
}

main().catch((e) => {
  spawnSync('sh', ['-c', `${pm2} kill >/dev/null 2>&1`], { env });
  console.error(e);
  process.exit(1);
});
