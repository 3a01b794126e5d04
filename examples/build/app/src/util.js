// A second compiled file, so a build that fails half-way leaves dist/ half-written.
module.exports = { twice: (x) => x * 2 };
