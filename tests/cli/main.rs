//! The tier of integration tests that needs neither node nor pm2: the built binary on bad
//! input and on `guard clean`, against the demo app's files and real git. `cargo test` runs
//! it with the unit tests; the real-PM2 tier (`tests/guard`, feature `real-pm2`) runs from
//! `scripts/test.sh`.

#[path = "../guard/support.rs"]
mod support;

mod clean;
mod inputs;
