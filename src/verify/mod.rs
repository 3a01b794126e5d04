//! Deploy verification: how guard proves that a release it just (re)started is healthy.
//! `rules` holds the decisions as a pure state machine fed with observations; `driver` feeds
//! it from PM2's pid files, PM2's list, the health probe and the app's error log.

mod driver;
mod load_errors;
pub mod rules;

pub use driver::{pid_change, verify};
