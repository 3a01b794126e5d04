module.exports = { version: '1.0.0', pad: (s, n) => String(s).padStart(n) };
