// Runs each release through the seed procedure (clean; git pull; pm2 restart; sleep 10;
// curl -f) and through `guard deploy`, on the same app, and reports time to verdict, whether
// the verdict is right, and which version serves afterwards. Node only drives the run; every
// number comes from the real guard binary, real PM2 and real HTTP on 127.0.0.1.
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import net from 'node:net';

const repo = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
const guard = path.join(repo, 'target/release/guard');
const pm2 = path.join(repo, 'tests/node/node_modules/.bin/pm2');
const root = fs.mkdtempSync(path.join(os.tmpdir(), 'guard-bench-'));
const env = { ...process.env, PM2_HOME: path.join(root, 'pm2'), NO_COLOR: '1' };
const sh = (cmd, opts = {}) => execFileSync('sh', ['-c', cmd], { env, encoding: 'utf8', ...opts });
const git = (dir, args) => sh(`git -C ${dir} -c user.email=b@guard.invalid -c user.name=bench ${args}`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const p = s.address().port;
      s.close(() => resolve(p));
    });
  });
}

// curl, not fetch: a fresh connection each time, so a pooled socket to a process that has
// since been replaced cannot answer for the new one.
async function version(port) {
  const r = spawnSync('curl', ['-s', '-m', '2', '-w', '\n%{http_code}', `http://127.0.0.1:${port}/health`], { encoding: 'utf8' });
  const [body, code] = r.stdout.trim().split('\n').length > 1 ? [r.stdout.slice(0, r.stdout.lastIndexOf('\n')), r.stdout.slice(r.stdout.lastIndexOf('\n') + 1)] : ['', r.stdout.trim()];
  if (code === '000' || !code) return 'nothing';
  if (code !== '200') return `HTTP ${code}`;
  try {
    return JSON.parse(body).version;
  } catch {
    return 'HTTP 200';
  }
}

const releases = [
  { name: 'good', json: { mode: 'good' }, healthy: true },
  { name: 'crashes at start', json: { mode: 'crash-at-start' }, healthy: false },
  { name: 'crashes 1.5 s after start', json: { mode: 'crash-later', crash_after_ms: 1500 }, healthy: false },
  { name: '/health returns 500', json: { mode: 'health-500' }, healthy: false },
  { name: '/health hangs', json: { mode: 'health-hang' }, healthy: false },
];

async function main() {
  const port = await freePort();
  const upstream = path.join(root, 'upstream');
  const app = path.join(root, 'app');
  // The one fixture the demo and the tests use (examples/fixture.sh), with this bench's window.
  execFileSync('bash', [path.join(repo, 'examples/fixture.sh'), 'demo', root, String(port), pm2], {
    env: { ...env, STABLE_FOR: '10s', DEADLINE: '30s', TIMEOUT: '2s', INTERVAL: '250ms' },
  });
  const v1 = git(app, 'rev-parse HEAD').trim();
  const config = path.join(root, 'guard.toml');

  async function resetToV1() {
    git(app, `reset -q --hard ${v1}`);
    sh(`${pm2} delete demo-backend >/dev/null 2>&1 || true; ${pm2} start ${app}/ecosystem.config.js --only demo-backend >/dev/null`);
    for (let i = 0; i < 100 && (await version(port)) !== 'v1'; i++) await sleep(100);
    if ((await version(port)) !== 'v1') throw new Error('v1 did not come back for the next trial');
  }

  // The seed procedure, as written in the incident report (curl capped at 30 s: the report's
  // curl has no time limit and would wait for a hanging /health forever).
  async function seed() {
    sh(`cd ${app} && rm -rf dist *.tar.gz && git pull -q --ff-only && rm -rf dist *.tar.gz`);
    const t0 = Date.now();
    sh(`${pm2} restart demo-backend >/dev/null`);
    await sleep(10_000);
    const ok = spawnSync('curl', ['-sf', '-m', '30', `http://127.0.0.1:${port}/health`]).status === 0;
    return { healthy: ok, secs: (Date.now() - t0) / 1000 };
  }

  function guardDeploy() {
    const t0 = Date.now();
    const r = spawnSync(guard, ['--config', config, '--json', 'deploy'], {
      env: { ...env, GUARD_BENCH_RUSAGE: '1' },
      encoding: 'utf8',
    });
    const wall = (Date.now() - t0) / 1000;
    const doc = JSON.parse(r.stdout);
    const rusage = JSON.parse(r.stderr.split('\n').find((l) => l.includes('guard_rusage'))).guard_rusage;
    return { code: r.status, doc, wall, rusage };
  }

  const rows = [];
  let goodRun = null;
  for (const [i, rel] of releases.entries()) {
    const ver = `v${i + 2}`;
    fs.writeFileSync(path.join(upstream, 'release.json'), JSON.stringify({ version: ver, ...rel.json }) + '\n');
    git(upstream, `commit -qam ${ver}`);
    git(upstream, 'push -q origin main');

    await resetToV1();
    const s = await seed();
    const seedServes = await version(port);

    await resetToV1();
    const g = guardDeploy();
    const guardServes = await version(port);
    const v = g.doc.data.verdict;
    // Measured like the seed's: from the start of the restart to the verdict.
    const restartStep = g.doc.steps.find((st) => st.name === 'restart');
    const fromRestart = (restartStep.duration_ms + v.elapsed_ms) / 1000;
    const gHealthy = v.healthy;
    let detectMs = null;
    if (rel.json.mode === 'crash-later') {
      const logs = path.join(root, 'backups', `incident-${g.doc.incident}`, 'logs', 'demo-backend-0-error.log');
      const m = [...fs.readFileSync(logs, 'utf8').matchAll(/crashed after \d+ ms, at (\d+)/g)].pop();
      if (m) detectMs = Date.parse(v.decided_at) - Number(m[1]);
    }
    const back = g.doc.data.rollback;
    const backSecs = back && back.ready_at ? (Date.parse(back.ready_at) - Date.parse(v.decided_at)) / 1000 : null;
    const overhead = gHealthy && v.ready_after_ms != null ? (v.elapsed_ms - v.ready_after_ms - 10_000) / 1000 : null;
    rows.push({ rel, ver, s, seedServes, g, guardServes, gHealthy, v, fromRestart, detectMs, backSecs, overhead });
    if (rel.healthy) goodRun = g;
  }
  await resetToV1();
  sh(`${pm2} kill >/dev/null 2>&1 || true`);

  const ok = (verdict, want) => (verdict === want ? 'right' : '**wrong**');
  const word = (h) => (h ? 'healthy' : 'unhealthy');
  const lines = [];
  lines.push(`Machine: ${os.cpus().length} × ${os.cpus()[0].model.trim()}, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, ${os.platform()} ${os.release()}, Node ${process.version}, pm2 ${sh(`${pm2} --version`).trim().split('\n').pop()}; health.stable_for = 10s, deadline = 30s, timeout = 2s; ${new Date().toISOString().slice(0, 10)}.`);
  lines.push('');
  lines.push('Times are from the start of the restart to the verdict (for guard: `pm2 delete` + `pm2 start`, then verification).');
  lines.push('');
  lines.push('| release | seed: verdict after | seed: verdict | seed: serves after | guard: verdict after | guard: verdict (reason) | guard: exit | guard: serves after |');
  lines.push('|---|---|---|---|---|---|---|---|');
  let seedRight = 0, guardRight = 0, seedRestored = 0, guardRestored = 0;
  for (const r of rows) {
    if (r.s.healthy === r.rel.healthy) seedRight++;
    if (r.gHealthy === r.rel.healthy) guardRight++;
    if (!r.rel.healthy && r.seedServes === 'v1') seedRestored++;
    if (!r.rel.healthy && r.guardServes === 'v1') guardRestored++;
    lines.push(
      `| ${r.ver}: ${r.rel.name} | ${r.s.secs.toFixed(1)} s | ${word(r.s.healthy)} (${ok(r.s.healthy, r.rel.healthy)}) | ${r.seedServes} ` +
        `| ${r.fromRestart.toFixed(2)} s | ${word(r.gHealthy)} (${ok(r.gHealthy, r.rel.healthy)}): ${r.v.message.replace(/\|/g, '/').replace(/ \(.*$/, '').slice(0, 60)} | ${r.g.code} | ${r.guardServes} |`,
    );
  }
  lines.push('');
  lines.push(`Right verdicts: seed ${seedRight}/5, guard ${guardRight}/5. Bad releases after which the previous version (v1) serves again: seed ${seedRestored}/4, guard ${guardRestored}/4.`);
  lines.push('');
  const late = rows.find((r) => r.detectMs != null);
  if (late) lines.push(`- Crash 1.5 s after start: guard's verdict came ${late.detectMs} ms after the process logged its crash.`);
  for (const r of rows.filter((r) => r.backSecs != null)) {
    lines.push(`- ${r.rel.name}: v1 answered again ${r.backSecs.toFixed(2)} s after the verdict (restore + pm2 delete/start + the app's own start).`);
  }
  const good = rows.find((r) => r.rel.healthy);
  if (good && good.overhead != null) {
    lines.push(`- Good release: verdict ${(good.v.elapsed_ms / 1000).toFixed(2)} s after verification started = ready after ${(good.v.ready_after_ms / 1000).toFixed(2)} s + stable_for 10 s + ${good.overhead.toFixed(2)} s.`);
  }
  if (goodRun) {
    lines.push(`- guard's own resources over the whole good deploy (${goodRun.wall.toFixed(1)} s wall, 10 s stability window): CPU ${goodRun.rusage.cpu_s.toFixed(3)} s, peak RSS ${(goodRun.rusage.max_rss_kb / 1024).toFixed(1)} MiB (getrusage RUSAGE_SELF); the pm2 and git commands it ran used ${goodRun.rusage.children_cpu_s.toFixed(2)} s CPU.`);
  }
  console.log(lines.join('\n'));
  fs.rmSync(root, { recursive: true, force: true });
}

main().catch((e) => {
  spawnSync('sh', ['-c', `${pm2} kill >/dev/null 2>&1`], { env });
  console.error(e);
  process.exit(1);
});
