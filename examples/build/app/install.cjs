// Stands in for `npm ci`: node_modules/ is removed and every dependency of package.json is
// installed anew from vendor/ (fresh files, new inodes and times, as npm ci writes them).
const fs = require('fs');
const path = require('path');

const pkg = JSON.parse(fs.readFileSync(path.join(__dirname, 'package.json'), 'utf8'));
const modules = path.join(__dirname, 'node_modules');
fs.rmSync(modules, { recursive: true, force: true });
for (const name of Object.keys(pkg.dependencies || {})) {
  fs.cpSync(path.join(__dirname, 'vendor', name), path.join(modules, name), { recursive: true });
}
console.log(`installed ${Object.keys(pkg.dependencies || {}).length} package(s)`);
