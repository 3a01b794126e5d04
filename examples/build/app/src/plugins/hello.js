// A plugin the server loads from dist/plugins/.
module.exports = { name: 'hello' };
