// Stands in for `npm run build` (tsc into dist/): every file of src/ is "compiled" into dist/
// with the release baked in. A release whose release.json says "build-fails" writes part of
// dist/ and then fails, as a type error half-way through a build does.
const fs = require('fs');
const path = require('path');

const release = JSON.parse(fs.readFileSync(path.join(__dirname, 'release.json'), 'utf8'));
const dist = path.join(__dirname, 'dist');
fs.rmSync(dist, { recursive: true, force: true });
fs.mkdirSync(dist);
const files = fs.readdirSync(path.join(__dirname, 'src')).sort();
for (const [i, file] of files.entries()) {
  const src = fs.readFileSync(path.join(__dirname, 'src', file), 'utf8');
  fs.writeFileSync(path.join(dist, file), `// built from src/${file}\nconst BUILT = ${JSON.stringify(release)};\n${src}`);
  if (release.mode === 'build-fails' && i === 0) {
    console.error(`src/${files[1] || file}(3,7): error TS2322: Type 'string' is not assignable to type 'number'.`);
    process.exit(2);
  }
}
console.log(`built ${files.length} file(s) into dist/ for release ${release.version}`);
