// Whole-tree snapshots on an app shaped like a NestJS service (about 27,000 files, about
// 500 MB, mostly node_modules/, plus dist/), generated here with incompressible, distinct
// contents. Every number comes from the real guard binary (release build) against a real
// PM2 daemon: snapshot times are guard's `backup` step, restore times its `restore` step
// inside a real `guard rollback` (which then restarts and verifies the app), peak RSS is
// guard's own (getrusage). Side by side, in the same run: `cp -a` of the tree, and a
// Capistrano-style release folder (a copy of the code plus a reinstall of node_modules).
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import http from 'node:http';
import readline from 'node:readline';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import net from 'node:net';

const repo = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
const guard = path.join(repo, 'target/release/guard');
const pm2 = path.join(repo, 'tests/node/node_modules/.bin/pm2');
const root = fs.mkdtempSync(path.join(process.env.BENCH_DIR || os.tmpdir(), 'guard-tree-'));
const env = { ...process.env, PM2_HOME: path.join(root, 'pm2'), NO_COLOR: '1' };
const PACKAGES = Number(process.env.PACKAGES || 1000);
const FILES_PER_PACKAGE = 26;
const DIST_FILES = 600;

const app = path.join(root, 'app');
const pristine = path.join(root, 'npm-cache'); // what `npm ci` would install from
const sh = (cmd) => execFileSync('sh', ['-c', cmd], { env, encoding: 'utf8' });
const secs = (t0) => (Number(process.hrtime.bigint() - t0) / 1e9);
const now = () => process.hrtime.bigint();

function sizeFor(i) {
  // Sizes from 1 KB to about 60 KB: many small files, some large, as in node_modules.
  return 1024 + ((i * 7919) % 14) ** 2 * 300;
}

function writePackage(dir, p, salt) {
  fs.mkdirSync(dir, { recursive: true });
  for (let f = 0; f < FILES_PER_PACKAGE; f++) {
    fs.writeFileSync(path.join(dir, `f${f}.js`), crypto.randomBytes(sizeFor(p * FILES_PER_PACKAGE + f) + salt));
  }
}

function writeDist(release) {
  const dist = path.join(app, 'dist');
  fs.rmSync(dist, { recursive: true, force: true });
  fs.mkdirSync(path.join(dist, 'modules'), { recursive: true });
  for (let f = 0; f < DIST_FILES; f++) {
    fs.writeFileSync(path.join(dist, 'modules', `m${f}.js`), `// release ${release}\n` + crypto.randomBytes(12_000).toString('base64'));
  }
  fs.writeFileSync(path.join(dist, 'main.js'), fs.readFileSync(path.join(app, 'server.src.js'), 'utf8').replace('RELEASE', release));
}

async function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const p = s.address().port;
      s.close(() => resolve(p));
    });
  });
}

function duBytes(p) {
  return Number(sh(`du -sb ${p}`).split('\t')[0]);
}

// Every timed operation starts on a quiet disk: the write-back of what the previous step (or
// this script's own set-up) wrote must not be charged to the next one. The same for guard
// and for the alternatives.
function settle() {
  execFileSync('sync');
}

function run(args) {
  settle();
  const t0 = now();
  const r = spawnSync(guard, ['--config', path.join(root, 'guard.toml'), '--json', ...args], {
    env: { ...env, GUARD_BENCH_RUSAGE: '1' },
    encoding: 'utf8',
    maxBuffer: 64 * 1024 * 1024,
  });
  const wall = secs(t0);
  let doc;
  try {
    doc = JSON.parse(r.stdout);
  } catch {
    throw new Error(`guard ${args.join(' ')} printed no JSON (exit ${r.status}): ${r.stderr}`);
  }
  const rusage = JSON.parse(r.stderr.split('\n').find((l) => l.includes('guard_rusage'))).guard_rusage;
  const step = (name) => (doc.steps.find((s) => s.name === name) || {}).duration_ms / 1000;
  return { code: r.status, doc, wall, rusage, step };
}

function must(r, code, what) {
  if (r.code !== code) throw new Error(`${what}: exit ${r.code}, wanted ${code}: ${JSON.stringify(r.doc).slice(0, 2000)}`);
  return r;
}

function getVersion(port) {
  return new Promise((resolve) => {
    const req = http.get({ host: '127.0.0.1', port, path: '/', agent: false, timeout: 500 }, (res) => {
      let body = '';
      res.on('data', (c) => { body += c; });
      res.on('end', () => { try { resolve(JSON.parse(body).version); } catch { resolve(null); } });
    });
    req.on('error', () => resolve(null));
    req.on('timeout', () => { req.destroy(); resolve(null); });
  });
}

// `guard deploy -- CMD` with its step lines read as they are printed: the moment of the
// failed verification, then the first moment v1 answers after it.
async function deployAndWatch(cmd, port) {
  settle();
  const child = spawn(guard, ['--config', path.join(root, 'guard.toml'), 'deploy', '--', 'sh', '-c', cmd], {
    env: { ...env, GUARD_BENCH_RUSAGE: '1' },
  });
  let verdictAt = null;
  let out = '';
  const lines = readline.createInterface({ input: child.stdout });
  lines.on('line', (l) => {
    out += `${l}\n`;
    if (verdictAt === null && /^FAIL\s+verify\b/.test(l)) verdictAt = now();
  });
  let errText = '';
  child.stderr.on('data', (c) => { errText += c; });
  const exited = new Promise((resolve) => child.on('exit', (code) => resolve(code)));
  let answeredAt = null;
  let done = false;
  exited.then(() => { done = true; });
  while (!done || (verdictAt !== null && answeredAt === null)) {
    if (verdictAt !== null && answeredAt === null && (await getVersion(port)) === 'v1') answeredAt = now();
    if (done && answeredAt === null && verdictAt === null) break;
    if (done && answeredAt === null && Number(now() - verdictAt) / 1e9 > 30) break;
    await new Promise((r) => setTimeout(r, 20));
  }
  const code = await exited;
  const restoreLine = out.split('\n').find((l) => /\brestore\b/.test(l) && /\(([\d.]+)(ms|s)\)$/.test(l));
  const m = restoreLine && restoreLine.match(/\(([\d.]+)(ms|s)\)$/);
  const restore = m ? Number(m[1]) / (m[2] === 'ms' ? 1000 : 1) : NaN;
  const ru = errText.split('\n').find((l) => l.includes('guard_rusage'));
  return {
    code,
    out,
    toV1: verdictAt !== null && answeredAt !== null ? Number(answeredAt - verdictAt) / 1e9 : NaN,
    restore,
    err: errText,
    rusage: ru ? JSON.parse(ru).guard_rusage.max_rss_kb : null,
  };
}

async function main() {
  const port = await freePort();
  console.error(`generating the tree in ${root} ...`);
  fs.mkdirSync(app, { recursive: true });
  fs.writeFileSync(path.join(app, 'server.src.js'),
    `require('http').createServer((q, s) => s.end(JSON.stringify({ status: 'ok', version: 'RELEASE' }))).listen(Number(process.env.PORT), '127.0.0.1');\n`);
  fs.writeFileSync(path.join(app, 'package.json'), '{ "name": "nest-like", "version": "1.0.0", "private": true }\n');
  fs.writeFileSync(path.join(app, 'env.env'), `PORT=${port}\nDATABASE_URL=postgres://bench:bench-secret@127.0.0.1/db\n`);
  fs.chmodSync(path.join(app, 'env.env'), 0o600);
  fs.writeFileSync(path.join(app, 'ecosystem.config.js'),
    `module.exports = { apps: [{ name: 'nest-like', script: 'dist/main.js', cwd: __dirname, max_restarts: 3, min_uptime: '30s', env: { PORT: '${port}' } }] };\n`);
  for (let p = 0; p < PACKAGES; p++) writePackage(path.join(pristine, `pkg${p}`), p, 0);
  sh(`cp -a ${pristine} ${app}/node_modules`);
  writeDist('v1');
  const treeBytes = duBytes(app);
  const treeFiles = Number(sh(`find ${app} -type f | wc -l`).trim());
  fs.writeFileSync(path.join(root, 'guard.toml'),
    `[app]\nname = "nest-like"\ndir = "app"\n[backup]\ndir = "backups"\nfiles = ["ecosystem.config.js", "env.env", "package.json"]\n` +
    `[clean]\npaths = []\n[health]\nurl = "http://127.0.0.1:${port}/"\nstable_for = "1s"\ndeadline = "20s"\n[pm2]\nbin = "${pm2}"\nhome = "pm2"\n`);
  sh(`${pm2} start ${app}/ecosystem.config.js >/dev/null`);
  sh('sync');

  const rss = [];
  const rows = [];
  const note = (what, value, target, r) => {
    rows.push({ what, value, target });
    if (r) rss.push(r.rusage.max_rss_kb);
  };

  // The alternatives, same tree, same disk, same run.
  settle();
  let t0 = now();
  sh(`cp -a ${app} ${root}/cp-a-copy`);
  const cpA = secs(t0);
  sh(`rm -rf ${root}/cp-a-copy`);

  const first = must(run(['backup']), 0, 'first backup');
  note('first snapshot (empty store: every file read and stored)', `${first.step('backup').toFixed(2)} s`, '-', first);
  const unchanged = must(run(['backup']), 0, 'backup of an unchanged tree');
  note('snapshot, tree unchanged since the last snapshot', `${unchanged.step('backup').toFixed(2)} s`, '≤ 0.5 s', unchanged);

  // `npm ci`: every file of node_modules written anew with the same bytes.
  settle();
  t0 = now();
  sh(`rm -rf ${app}/node_modules && cp -a ${pristine} ${app}/node_modules`);
  const reinstall = secs(t0);
  const afterCi = must(run(['backup']), 0, 'backup after a reinstall');
  const ciId = afterCi.doc.incident;
  note('snapshot after `npm ci` rewrote all of node_modules (same content)', `${afterCi.step('backup').toFixed(2)} s`, '≤ 2 s', afterCi);

  // A deploy that only rebuilt dist/, rolled back.
  writeDist('v2');
  const rbDist = must(run(['rollback', '--incident', ciId]), 0, 'rollback after a dist change');
  note('restore when only dist/ changed', `${rbDist.step('restore').toFixed(2)} s`, '≤ 0.5 s', rbDist);
  note('(that rollback\'s check of the incident before it changes anything)', `${rbDist.step('incident').toFixed(2)} s`, '-', null);
  note('(the pre-rollback snapshot of that rollback)', `${rbDist.step('backup').toFixed(2)} s`, '-', null);

  // Ten deploys, each with a new dist/ and one changed dependency, each snapshotted.
  const capistrano = path.join(root, 'releases');
  let capSecs = 0;
  for (let d = 1; d <= 10; d++) {
    writeDist(`d${d}`);
    writePackage(path.join(app, 'node_modules', `pkg${d}`), d, 100 + d);
    must(run(['backup']), 0, `deploy ${d} snapshot`);
    // Capistrano / Deployer: a fresh release folder with the code and a reinstall.
    settle();
    t0 = now();
    const rel = path.join(capistrano, String(d));
    sh(`mkdir -p ${rel} && tar -C ${app} --exclude=./node_modules -cf - . | tar -C ${rel} -xf - && cp -a ${app}/node_modules ${rel}/node_modules`);
    capSecs += secs(t0);
  }
  const backupsBytes = duBytes(path.join(root, 'backups'));
  const capBytes = duBytes(capistrano);
  note('disk of backup.dir after ten deploys that each changed dist/ and one dependency (13 incidents) / one tree',
    `${(backupsBytes / treeBytes).toFixed(2)} × (${(backupsBytes / 1e6).toFixed(0)} MB)`, '≤ 1.3 ×', null);
  // A deploy that changed every file of node_modules (new versions of everything), rolled back.
  for (let p = 0; p < PACKAGES; p++) writePackage(path.join(app, 'node_modules', `pkg${p}`), p, 1);
  // The same replacement done by hand, just before, for comparison: an old node_modules
  // removed and the other one copied in (rm -rf + cp -a), as guard's restore must do.
  sh(`cp -a ${app}/node_modules ${root}/cmp-modules`);
  settle();
  t0 = now();
  sh(`rm -rf ${root}/cmp-modules && cp -a ${pristine} ${root}/cmp-modules`);
  const cpModules = secs(t0);
  sh(`rm -rf ${root}/cmp-modules`);
  const rbMods = must(run(['rollback', '--incident', ciId]), 0, 'rollback after a node_modules change');
  note('restore when all of node_modules changed', `${rbMods.step('restore').toFixed(2)} s (\`rm -rf\` + \`cp -a\` of node_modules just before: ${cpModules.toFixed(2)} s, ratio ${(rbMods.step('restore') / cpModules).toFixed(2)})`, '≤ 0.5 × `rm -rf` + `cp -a`', rbMods);
  note('(that rollback\'s check of the incident: every object it will need read and hashed)', `${rbMods.step('incident').toFixed(2)} s`, '-', null);
  note('(that rollback\'s pre-rollback snapshot: 500 MB of new contents stored)', `${rbMods.step('backup').toFixed(2)} s`, '-', null);

  // A deploy that replaces all of node_modules and breaks the app: guard's verdict, its
  // automatic rollback, and the time from the verdict (guard's FAIL line) to v1 answering again,
  // seen by a poller every 20 ms.
  for (let p = 0; p < PACKAGES; p++) writePackage(path.join(root, 'npm-cache-v3', `pkg${p}`), p, 3);
  fs.writeFileSync(path.join(root, 'broken-main.js'), 'throw new Error("release v3 cannot start");\n');
  const auto = await deployAndWatch(`rm -rf node_modules && cp -a ${root}/npm-cache-v3 node_modules && cp ${root}/broken-main.js dist/main.js`, port);
  if (process.env.BENCH_SHOW) console.error(auto.out);
  if (auto.code !== 3) throw new Error(`the breaking deploy: exit ${auto.code}, wanted 3:\n${auto.out}\n${auto.err}`);
  note('automatic rollback after a deploy that replaced all of node_modules and crashed: from the verdict to v1 answering', `${auto.toV1.toFixed(2)} s (its restore step: ${auto.restore.toFixed(2)} s)`, '≤ 3 s', null);
  const rssAuto = auto.rusage;
  if (rssAuto) rss.push(rssAuto);

  const peak = Math.max(...rss) / 1024;
  note('guard peak RSS over all of the above (getrusage)', `${peak.toFixed(1)} MB`, '≤ 50 MB', null);
  sh(`${pm2} kill >/dev/null 2>&1 || true`);

  const lines = [];
  lines.push(`Tree: ${treeFiles} files, ${(treeBytes / 1e6).toFixed(0)} MB (${PACKAGES} packages in node_modules/, ${DIST_FILES + 1} files in dist/). Machine: ${os.cpus().length} × ${os.cpus()[0].model.trim()}, ${os.platform()} ${os.release()}, Node ${process.version}; ${new Date().toISOString().slice(0, 10)}.`);
  lines.push('');
  lines.push('| what | guard | target |');
  lines.push('|---|---|---|');
  for (const r of rows) lines.push(`| ${r.what} | ${r.value} | ${r.target} |`);
  lines.push('');
  lines.push('The alternatives, same tree, same run:');
  lines.push('');
  lines.push(`- \`cp -a\` of the whole tree: ${cpA.toFixed(2)} s and one more tree of disk per backup; guard's snapshot of the unchanged tree took ${(unchanged.step('backup') / cpA * 100).toFixed(0)} % of that time, and after a reinstall ${(afterCi.step('backup') / cpA * 100).toFixed(0)} %.`);
  lines.push(`- \`npm ci\` stand-in (rm -rf node_modules + copy from a local cache): ${reinstall.toFixed(2)} s.`);
  lines.push(`- Capistrano-style release folders (code copy + reinstall of node_modules), 10 releases: ${(capSecs / 10).toFixed(2)} s each, ${(capBytes / treeBytes).toFixed(2)} × one tree of disk (${(capBytes / 1e6).toFixed(0)} MB) vs guard's ${(backupsBytes / treeBytes).toFixed(2)} × for 13 snapshots: ${(capBytes / backupsBytes).toFixed(1)} × more.`);
  console.log(lines.join('\n'));
  fs.rmSync(root, { recursive: true, force: true });
}

main().catch((e) => {
  spawnSync('sh', ['-c', `${pm2} kill >/dev/null 2>&1`], { env });
  console.error(e);
  fs.rmSync(root, { recursive: true, force: true });
  process.exit(1);
});
