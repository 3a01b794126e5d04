module.exports = { version: '2.0.0', pad: (s, n) => String(s).padEnd(n) };
