// Stands in for `npm run build` (tsc into dist/): every file under src/ is "compiled" into
// the same place under dist/, with the release baked in. Like tsc, it never deletes what is
// already in dist/: a file a release no longer builds stays there, stale, unless something
// cleans dist/ first (the incident). A release whose release.json says "build-fails" writes
// part of dist/ and then fails, as a type error half-way through a build does.
const fs = require('fs');
const path = require('path');

const release = JSON.parse(fs.readFileSync(path.join(__dirname, 'release.json'), 'utf8'));
const src = path.join(__dirname, 'src');
const files = fs.readdirSync(src, { recursive: true }).filter((f) => f.endsWith('.js')).sort();
for (const [i, file] of files.entries()) {
  const out = path.join(__dirname, 'dist', file);
  fs.mkdirSync(path.dirname(out), { recursive: true });
  const code = fs.readFileSync(path.join(src, file), 'utf8');
  fs.writeFileSync(out, `// built from src/${file}\nconst BUILT = ${JSON.stringify(release)};\n${code}`);
  if (release.mode === 'build-fails' && i === 0) {
    console.error(`src/${files[1] || file}(3,7): error TS2322: Type 'string' is not assignable to type 'number'.`);
    process.exit(2);
  }
}
console.log(`built ${files.length} file(s) into dist/ for release ${release.version}`);
