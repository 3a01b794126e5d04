//! guard's integration tests: the built binary against the demo app under a real PM2 daemon,
//! real git and real HTTP on 127.0.0.1. See support.rs for the harness.

mod nginx;
mod support;

mod backup_rollback;
mod build;
mod check;

mod deploy;
mod faults;
mod fleet;
mod inputs;
mod json_shape;
mod snapshots;
mod strategies;
mod switch;
mod trust;
mod verification;
mod watching;
