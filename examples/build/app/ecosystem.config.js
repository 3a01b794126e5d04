// PM2 ecosystem of the build demo: PM2 runs the compiled dist/server.js, fail-fast as the
// incident report's fix set it, env values from env.env.
const fs = require('fs');
const path = require('path');

function loadEnv(file) {
  const env = {};
  if (!fs.existsSync(file)) return env;
  for (const line of fs.readFileSync(file, 'utf8').split('\n')) {
    const m = line.match(/^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$/);
    if (m) env[m[1]] = m[2].replace(/^(['"])(.*)\1$/, '$2');
  }
  return env;
}

module.exports = {
  apps: [
    {
      name: 'build-backend',
      script: 'dist/server.js',
      cwd: __dirname,
      exec_mode: 'fork',
      instances: 1,
      max_restarts: 3,
      min_uptime: '30s',
      kill_timeout: 3000,
      env: loadEnv(path.join(__dirname, 'env.env')),
    },
  ],
};
