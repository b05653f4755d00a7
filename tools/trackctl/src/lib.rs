//! `trackctl`, the trackline ops CLI, as a library: the binary only parses arguments and calls
//! [`commands::run`]; the simulator ([`simulate`]) is usable on its own, e.g. as a load generator,
//! and so are the route-history pieces ([`history`], [`track`], [`replay`], [`export`], [`stats`]).

pub mod api;
pub mod cli;
pub mod commands;
pub mod courier;
pub mod duration;
pub mod eta_eval;
pub mod exit;
pub mod export;
pub mod history;
pub mod progress;
pub mod random;
pub mod replay;
pub mod schedule;
pub mod simulate;
pub mod stats;
pub mod token;
pub mod track;
pub mod trip;
pub mod when;
