//! `trackctl`, the trackline ops CLI, as a library: the binary only parses arguments and calls
//! [`commands::run`]; the simulator ([`simulate`]) is usable on its own, e.g. as a load generator.

pub mod api;
pub mod buffer;
pub mod cli;
pub mod commands;
pub mod courier;
pub mod duration;
pub mod exit;
pub mod progress;
pub mod schedule;
pub mod simulate;
pub mod token;
pub mod trip;
