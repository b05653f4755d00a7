//! The end-to-end tests: one binary (compiled and linked once), one module per feature. Each test
//! starts its own server on 127.0.0.1:0 over its own temporary dir, so tests run in parallel
//! threads without sharing anything but the process (and so its metrics recorder: the tests that
//! read a counter exactly run the server binary, which has its own).

mod access;
mod client;
mod clock_offset;
mod cluster;
mod cors;
mod courier_stream;
mod crash;
mod durability;
mod full_disk;
mod heartbeats;
mod hostile_clients;
mod limits;
mod openapi;
mod orders_rest;
mod plans;
mod presence;
mod resume;
mod retention;
mod shutdown;
mod slow_watchers;
mod stops;
mod validation;
mod watch_stream;
mod webhooks;
